//! Ports on 127.0.0.1: one that is free to listen on, and waiting until something listens on a
//! port or has let go of it (the launchers here start servers on free ports and kill them).

use std::time::Duration;

/// Nothing listened on a port within the time allowed.
#[derive(Debug, thiserror::Error)]
#[error("{name} did not listen on 127.0.0.1:{port} within {waited:?}")]
pub struct NotListening {
    pub name: String,
    pub port: u16,
    pub waited: Duration,
}

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Whether something accepts TCP connections on 127.0.0.1:`port`.
pub async fn listening(port: u16) -> bool {
    matches!(
        tokio::time::timeout(
            Duration::from_millis(500),
            tokio::net::TcpStream::connect(("127.0.0.1", port))
        )
        .await,
        Ok(Ok(_))
    )
}

/// Waits until 127.0.0.1:`port` accepts connections, at most `wait`; `name` says what should
/// have listened.
pub async fn wait_listening(name: &str, port: u16, wait: Duration) -> Result<(), NotListening> {
    let deadline = tokio::time::Instant::now() + wait;
    while tokio::time::Instant::now() < deadline {
        if listening(port).await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(NotListening {
        name: name.to_owned(),
        port,
        waited: wait,
    })
}

/// Waits until nothing accepts connections on 127.0.0.1:`port` any more, at most `wait`.
pub async fn wait_closed(port: u16, wait: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + wait;
    while tokio::time::Instant::now() < deadline {
        if !listening(port).await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}
