//! The RabbitMQ settings the chaos runs use: the ones compose ships
//! (`deploy/rabbitmq/rabbitmq.conf`), so that the private node or cluster (from `testkit`) runs
//! as configured in production, its WAL size above all. The definitions line is left out: the
//! services declare their topology themselves.

/// compose's `rabbitmq.conf`, as shipped.
const SHIPPED_CONF: &str = include_str!("../../deploy/rabbitmq/rabbitmq.conf");

/// The lines of compose's `rabbitmq.conf` other than `load_definitions`.
pub fn shipped_settings() -> String {
    SHIPPED_CONF
        .lines()
        .filter(|line| !line.trim_start().starts_with("load_definitions"))
        .map(|line| format!("{line}\n"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// compose.cluster.yaml's nodes get `cluster.conf` instead of `rabbitmq.conf`: it must keep
    /// every other setting, so that the cluster runs as configured as the single node.
    #[test]
    fn the_cluster_config_keeps_every_shipped_setting() {
        let cluster = include_str!("../../deploy/rabbitmq/cluster.conf");
        let settings = |text: &str| -> Vec<String> {
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_owned)
                .collect()
        };
        let cluster = settings(cluster);
        for line in settings(&shipped_settings()) {
            assert!(cluster.contains(&line), "cluster.conf lacks {line:?}");
        }
        assert!(!cluster.iter().any(|l| l.starts_with("load_definitions")));
        let names: Vec<&String> = cluster
            .iter()
            .filter(|l| l.starts_with("cluster_formation.classic_config.nodes."))
            .collect();
        assert_eq!(names.len(), testkit::broker_cluster::SIZE, "{names:?}");
    }

    #[test]
    fn the_node_gets_the_shipped_settings_but_not_the_definitions() {
        let settings = shipped_settings();
        assert!(settings.contains("raft.wal_max_size_bytes"), "{settings}");
        assert!(!settings.contains("load_definitions"), "{settings}");
    }
}
