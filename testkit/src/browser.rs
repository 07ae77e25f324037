//! Headless Chromium for the page tests (Debian's `chromium` package), driven over the Chrome
//! DevTools Protocol: one page, JavaScript evaluated in it, screenshots.
//!
//! Without chromium, [`Browser::launch`] fails with what to install: a test that needs it fails,
//! it is never skipped. `scripts/ensure-test-tools.sh` installs it.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use base64::Engine;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// `$CHROMIUM`, or `chromium` / `chromium-browser` on the `PATH`.
pub fn find_chromium() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("CHROMIUM") {
        return Ok(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .flat_map(|dir| ["chromium", "chromium-browser"].map(|name| dir.join(name)))
        .find(|candidate| candidate.is_file())
        .context("chromium is not installed: run scripts/ensure-test-tools.sh (apt-get install -y chromium) or set CHROMIUM")
}

/// A running headless Chromium with one page; killed when dropped.
pub struct Browser {
    _child: tokio::process::Child,
    socket: Socket,
    next_id: u64,
}

impl Browser {
    /// Starts chromium with a fresh profile in `profile` and connects to its page.
    pub async fn launch(profile: &Path) -> Result<Self> {
        let chromium = find_chromium()?;
        let child = tokio::process::Command::new(&chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--hide-scrollbars",
                "--window-size=1280,1400",
                "--remote-debugging-port=0",
                "--remote-allow-origins=*",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("start {}", chromium.display()))?;
        // Chromium writes the port it chose for DevTools into its profile.
        let port_file = profile.join("DevToolsActivePort");
        let port = crate::eventually(Duration::from_secs(30), || async {
            let text = tokio::fs::read_to_string(&port_file).await.ok()?;
            text.lines().next()?.trim().parse::<u16>().ok()
        })
        .await
        .context("chromium did not open its DevTools port")?;
        let targets: Value = reqwest::get(format!("http://127.0.0.1:{port}/json/list"))
            .await?
            .json()
            .await?;
        let url = targets
            .as_array()
            .and_then(|all| all.iter().find(|t| t["type"] == "page"))
            .and_then(|page| page["webSocketDebuggerUrl"].as_str())
            .context("chromium has no page")?
            .to_owned();
        let (socket, _) = tokio_tungstenite::connect_async(url).await?;
        Ok(Self {
            _child: child,
            socket,
            next_id: 0,
        })
    }

    /// One DevTools call; returns its `result`.
    pub async fn call(&mut self, method: &str, params: Value) -> Result<Value> {
        self.next_id += 1;
        let id = self.next_id;
        let request = json!({"id": id, "method": method, "params": params});
        self.socket
            .send(Message::Text(request.to_string().into()))
            .await?;
        loop {
            let message = self
                .socket
                .next()
                .await
                .context("the DevTools connection closed")??;
            if let Message::Text(text) = message {
                let mut value: Value = serde_json::from_str(text.as_str())?;
                if value["id"] == id {
                    if let Some(error) = value.get("error") {
                        bail!("{method} failed: {error}");
                    }
                    return Ok(value["result"].take());
                }
            }
        }
    }

    /// Opens `url` in the page (a full load, even when only the fragment differs).
    pub async fn open(&mut self, url: &str) -> Result<()> {
        self.call("Page.navigate", json!({"url": "about:blank"}))
            .await?;
        self.call("Page.navigate", json!({"url": url})).await?;
        Ok(())
    }

    /// Evaluates a JavaScript expression in the page and returns its value.
    pub async fn eval(&mut self, expression: &str) -> Result<Value> {
        let mut answer = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true}),
            )
            .await?;
        Ok(answer["result"]["value"].take())
    }

    /// Evaluates `expression` every 100 ms until `pred` holds for its value (at most `timeout`);
    /// returns that value, or fails with the last one.
    pub async fn wait_until(
        &mut self,
        expression: &str,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let value = self.eval(expression).await?;
            if pred(&value) {
                return Ok(value);
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("the page never showed {what}; last: {value}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A PNG of the whole page, written to `path`.
    pub async fn screenshot(&mut self, path: &Path) -> Result<()> {
        let shot = self
            .call(
                "Page.captureScreenshot",
                json!({"format": "png", "captureBeyondViewport": true}),
            )
            .await?;
        let data = shot["data"].as_str().context("no screenshot data")?;
        let png = base64::engine::general_purpose::STANDARD.decode(data)?;
        tokio::fs::write(path, png)
            .await
            .with_context(|| format!("write {}", path.display()))?;
        Ok(())
    }
}
