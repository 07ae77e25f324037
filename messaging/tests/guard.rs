//! The Redis guard of a saga step (`messaging::idempotency::Guard`) against the shared Redis,
//! under a key prefix of the test's own: `begin` takes the lock only for a step nobody did and
//! nobody holds, `finish` marks it done and gives the lock back, and a step found done leaves no
//! lock behind.

use std::time::Duration;

use messaging::idempotency::{Begin, Guard, shared_redis};
use testkit::env::redis_url;
use testkit::redis::delete_keys;

const TTL: Duration = Duration::from_secs(30);

/// Whether `key` exists, over a connection of the test's own.
async fn exists(key: &str) -> bool {
    let client = redis::Client::open(redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("EXISTS")
        .arg(key)
        .query_async(&mut conn)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_step_is_locked_once_held_elsewhere_and_done_once() {
    let prefix = format!("test-guard-{}:", uuid::Uuid::new_v4().simple());
    let guard = Guard::new(shared_redis(&redis_url()).unwrap(), &prefix);
    let other = Guard::new(shared_redis(&redis_url()).unwrap(), &prefix);

    let Begin::Locked(lock) = guard.begin("order-1", TTL).await.unwrap() else {
        panic!("a fresh step is not locked");
    };
    assert!(exists(&format!("{prefix}lock:order-1")).await);
    // Somebody else at the same time: held, and the lock stays the first one's.
    assert!(matches!(
        other.begin("order-1", TTL).await.unwrap(),
        Begin::Held
    ));
    assert!(guard.finish("order-1", lock, TTL).await.unwrap());
    assert!(exists(&format!("{prefix}processed:order-1")).await);
    assert!(!exists(&format!("{prefix}lock:order-1")).await);

    // Redelivered after it was done: processed, and no lock is left behind to block anyone.
    assert!(matches!(
        other.begin("order-1", TTL).await.unwrap(),
        Begin::Processed
    ));
    assert!(!exists(&format!("{prefix}lock:order-1")).await);
    // Another step is not affected by the first one's keys.
    assert!(matches!(
        other.begin("order-2", TTL).await.unwrap(),
        Begin::Locked(_)
    ));

    delete_keys(&redis_url(), &prefix).await.unwrap();
}

#[tokio::test]
async fn a_lock_that_is_not_ours_any_more_is_left_alone() {
    let prefix = format!("test-guard-{}:", uuid::Uuid::new_v4().simple());
    let guard = Guard::new(shared_redis(&redis_url()).unwrap(), &prefix);
    let Begin::Locked(lock) = guard
        .begin("order-1", Duration::from_millis(50))
        .await
        .unwrap()
    else {
        panic!("a fresh step is not locked");
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    // Expired and taken by someone else meanwhile.
    let Begin::Locked(theirs) = guard.begin("order-1", TTL).await.unwrap() else {
        panic!("an expired lock was not taken again");
    };
    // Finishing with the expired lock marks the step but does not delete their lock.
    assert!(!guard.finish("order-1", lock, TTL).await.unwrap());
    assert!(exists(&format!("{prefix}lock:order-1")).await);
    assert!(guard.release(theirs).await.unwrap());

    delete_keys(&redis_url(), &prefix).await.unwrap();
}
