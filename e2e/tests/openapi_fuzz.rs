//! Property-based API test: schemathesis (from PyPI) generates requests from `/openapi.json`,
//! valid and invalid, and checks that no answer is a 5xx and every answer matches the schema:
//! its status is documented, its content type and body are the documented ones.

use std::process::Stdio;

use e2e::{Options, System};
use testkit::TestEnv;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn schemathesis_finds_no_5xx_and_no_schema_violation() {
    let env = TestEnv::new("schemathesis").await.unwrap();
    let system = System::start(&env, Options::default()).await.unwrap();
    system.create_product(1_000_000).await.unwrap();

    // schemathesis keeps a cache in its working directory: give it a throwaway one.
    let scratch = tempfile::tempdir().unwrap();
    let output = tokio::process::Command::new("schemathesis")
        .current_dir(scratch.path())
        .args(["run", &system.url("/openapi.json")])
        .args(["--checks", "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance"])
        .args(["--max-examples", "25", "--seed", "1", "--workers", "2", "--request-timeout", "10", "--no-color"])
        .args(["--header", &format!("Authorization: Bearer {}", system.admin_token)])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .await
        .expect("schemathesis is installed by scripts/ensure-deps.sh (pip install schemathesis)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "schemathesis found problems:\n{stdout}\n{stderr}"
    );
    // It really exercised the API (not an empty run).
    assert!(
        stdout.contains("passed"),
        "no operation was tested:\n{stdout}"
    );

    system.stop().await;
    env.cleanup().await;
}
