//! The shared Redis connection (`messaging::shared_redis`) against a `redis-server` of the test's
//! own: many uses and many concurrent tasks go over one connection with no `PING`/`UNWATCH`
//! check per use, and a connection that broke (the server killed and started again) is replaced
//! by the next use after the one that found it broken.

use std::collections::HashMap;

use messaging::idempotency::redis_pool;
use messaging::shared_redis::SharedRedis;
use testkit::redis_server::RedisServer;

/// `INFO` of the server, over a connection of its own (counted in `total_connections_received`).
async fn info(url: &str) -> HashMap<String, String> {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let text: String = redis::cmd("INFO")
        .arg("everything")
        .query_async(&mut conn)
        .await
        .unwrap();
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

async fn incr(redis: &SharedRedis, key: &str) -> Result<i64, String> {
    let mut conn = redis.get().await.map_err(|e| e.to_string())?;
    redis::cmd("INCR")
        .arg(key)
        .query_async(&mut conn)
        .await
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn every_use_shares_one_connection_without_a_check_round_trip() {
    let mut server = RedisServer::private().await.unwrap();
    let url = server.url();
    let redis = SharedRedis::new(redis_pool(&url).unwrap());
    let connections = |info: &HashMap<String, String>| -> u64 {
        info["total_connections_received"].parse().unwrap()
    };
    let before = connections(&info(&url).await);

    for _ in 0..50 {
        incr(&redis, "n").await.unwrap();
    }
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let redis = redis.clone();
            tokio::spawn(async move { incr(&redis, "n").await })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }

    let info = info(&url).await;
    let calls = |cmd: &str| {
        info.get(&format!("cmdstat_{cmd}")).map(|s| {
            s.trim_start_matches("calls=")
                .split(',')
                .next()
                .unwrap()
                .to_owned()
        })
    };
    assert_eq!(calls("incr").as_deref(), Some("250"));
    assert_eq!(calls("ping"), None, "a use was checked with PING: {info:?}");
    assert_eq!(calls("unwatch"), None, "a use was checked with UNWATCH");
    // The shared connection and the one `info` just opened.
    assert_eq!(connections(&info), before + 2);
    server.sigkill().await;
}

#[tokio::test]
async fn a_broken_connection_is_replaced_by_the_next_use() {
    let mut server = RedisServer::private().await.unwrap();
    let url = server.url();
    let redis = SharedRedis::new(redis_pool(&url).unwrap());
    assert_eq!(incr(&redis, "n").await, Ok(1));

    server.sigkill().await;
    assert!(incr(&redis, "n").await.is_err(), "no server, yet a reply");
    server.start().await.unwrap();

    // The server keeps its data (append-only file): the count goes on. At most one use may
    // still meet the old connection (and learns then that it broke); the next one works.
    let n = match incr(&redis, "n").await {
        Ok(n) => n,
        Err(_) => incr(&redis, "n").await.unwrap(),
    };
    assert_eq!(n, 2);
    assert_eq!(incr(&redis, "n").await, Ok(3));
    let info = info(&url).await;
    assert_eq!(
        info["total_connections_received"], "3",
        "the restarted server's readiness probe, one shared connection, this one: {info:?}"
    );
    server.sigkill().await;
}
