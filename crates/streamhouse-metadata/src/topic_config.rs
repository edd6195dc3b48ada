//! The topic configs StreamHouse implements, parsed from Kafka's string form.

use std::collections::BTreeMap;

/// Which timestamp the records of a topic carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TimestampType {
    /// The producer's timestamp is kept.
    #[default]
    CreateTime,
    /// The agent stamps each batch with the time it was appended.
    LogAppendTime,
}

/// Kafka's default `max.message.bytes` (1 MiB plus the batch overhead).
pub const DEFAULT_MAX_MESSAGE_BYTES: i32 = 1_048_588;

/// A topic's effective configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct TopicConfig {
    /// `message.timestamp.type`: enforced at append.
    pub timestamp_type: TimestampType,
    /// `max.message.bytes`: the largest record batch accepted, enforced at append.
    pub max_message_bytes: i32,
    /// `retention.ms`: enforced by retention (-1: unlimited).
    pub retention_ms: i64,
    /// `retention.bytes`: enforced by retention (-1: unlimited).
    pub retention_bytes: i64,
    /// `cleanup.policy`: retention trims topics whose policy includes `delete`, log
    /// compaction keeps the latest record per key of topics whose policy includes
    /// `compact`.
    pub cleanup_policy: String,
    /// `delete.retention.ms`: how long log compaction keeps a tombstone (a record with a null
    /// value) after the first compaction that saw it.
    pub delete_retention_ms: i64,
    /// `min.compaction.lag.ms`: records committed less than this long ago are not compacted.
    pub min_compaction_lag_ms: i64,
    /// `max.compaction.lag.ms`: records left uncompacted this long are compacted whatever the
    /// dirty ratio.
    pub max_compaction_lag_ms: i64,
    /// `min.cleanable.dirty.ratio`: log compaction runs once the part not yet compacted is
    /// at least this share of the compactable bytes.
    pub min_cleanable_dirty_ratio: f64,
    /// `streamhouse.agent.group`: the agent group whose agents lead the topic's partitions.
    /// Set at creation to the creating agent's group unless given.
    pub agent_group: String,
}

/// The config naming a topic's agent group.
pub const AGENT_GROUP_CONFIG: &str = "streamhouse.agent.group";

/// The agent group of agents and topics that name none.
pub const DEFAULT_AGENT_GROUP: &str = "default";

/// Agent group names: 1 to 64 of `[A-Za-z0-9._-]`, like topic names.
pub fn validate_agent_group(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 64 {
        return Err(format!(
            "agent group {name:?} must be 1 to 64 characters long"
        ));
    }
    if let Some(c) = crate::first_illegal_char(name) {
        return Err(format!(
            "agent group {name:?} may hold only letters, digits, '.', '_' and '-', not {c:?}"
        ));
    }
    Ok(())
}

impl Default for TopicConfig {
    fn default() -> Self {
        TopicConfig {
            timestamp_type: TimestampType::CreateTime,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            retention_ms: 604_800_000,
            retention_bytes: -1,
            cleanup_policy: "delete".to_string(),
            delete_retention_ms: 86_400_000,
            min_compaction_lag_ms: 0,
            max_compaction_lag_ms: i64::MAX,
            min_cleanable_dirty_ratio: 0.5,
            agent_group: DEFAULT_AGENT_GROUP.to_string(),
        }
    }
}

impl TopicConfig {
    /// Config names we accept.
    pub const KNOWN: [&'static str; 10] = [
        "message.timestamp.type",
        "max.message.bytes",
        "retention.ms",
        "retention.bytes",
        "cleanup.policy",
        "delete.retention.ms",
        "min.compaction.lag.ms",
        "max.compaction.lag.ms",
        "min.cleanable.dirty.ratio",
        AGENT_GROUP_CONFIG,
    ];

    /// Whether retention trims the topic (`cleanup.policy` includes `delete`).
    pub fn deletes(&self) -> bool {
        self.cleanup_policy.split(',').any(|p| p == "delete")
    }

    /// Whether log compaction keeps only the latest record per key (`cleanup.policy`
    /// includes `compact`).
    pub fn compacts(&self) -> bool {
        self.cleanup_policy.split(',').any(|p| p == "compact")
    }

    /// Parses configs given at topic creation; unknown names and bad values are errors.
    pub fn parse(configs: &BTreeMap<String, String>) -> Result<TopicConfig, String> {
        let mut config = TopicConfig::default();
        for (name, value) in configs {
            match name.as_str() {
                "message.timestamp.type" => {
                    config.timestamp_type = match value.as_str() {
                        "CreateTime" => TimestampType::CreateTime,
                        "LogAppendTime" => TimestampType::LogAppendTime,
                        _ => {
                            return Err(format!(
                        "message.timestamp.type must be CreateTime or LogAppendTime, not {value:?}"
                    ))
                        }
                    }
                }
                "max.message.bytes" => {
                    config.max_message_bytes = parse_number(name, value)?;
                    if config.max_message_bytes < 0 {
                        return Err("max.message.bytes must not be negative".into());
                    }
                }
                "retention.ms" => config.retention_ms = parse_number(name, value)?,
                "retention.bytes" => config.retention_bytes = parse_number(name, value)?,
                "cleanup.policy" => match value.as_str() {
                    "delete" | "compact" | "compact,delete" | "delete,compact" => {
                        config.cleanup_policy = value.clone()
                    }
                    _ => return Err(format!("cleanup.policy {value:?} is not valid")),
                },
                "delete.retention.ms" | "min.compaction.lag.ms" | "max.compaction.lag.ms" => {
                    let ms: i64 = parse_number(name, value)?;
                    let floor = if name == "max.compaction.lag.ms" {
                        1
                    } else {
                        0
                    };
                    if ms < floor {
                        return Err(format!("{name} must be at least {floor}, not {ms}"));
                    }
                    match name.as_str() {
                        "delete.retention.ms" => config.delete_retention_ms = ms,
                        "min.compaction.lag.ms" => config.min_compaction_lag_ms = ms,
                        _ => config.max_compaction_lag_ms = ms,
                    }
                }
                "min.cleanable.dirty.ratio" => {
                    let ratio: f64 = parse_number(name, value)?;
                    if !(0.0..=1.0).contains(&ratio) {
                        return Err(format!(
                            "min.cleanable.dirty.ratio must be between 0 and 1, not {value:?}"
                        ));
                    }
                    config.min_cleanable_dirty_ratio = ratio;
                }
                AGENT_GROUP_CONFIG => {
                    validate_agent_group(value)?;
                    config.agent_group = value.clone();
                }
                _ => return Err(format!("config {name:?} is not supported")),
            }
        }
        Ok(config)
    }

    /// Every config with its effective value, for DescribeConfigs-like reports.
    pub fn entries(&self) -> Vec<(&'static str, String)> {
        vec![
            (
                "message.timestamp.type",
                match self.timestamp_type {
                    TimestampType::CreateTime => "CreateTime".to_string(),
                    TimestampType::LogAppendTime => "LogAppendTime".to_string(),
                },
            ),
            ("max.message.bytes", self.max_message_bytes.to_string()),
            ("retention.ms", self.retention_ms.to_string()),
            ("retention.bytes", self.retention_bytes.to_string()),
            ("cleanup.policy", self.cleanup_policy.clone()),
            ("delete.retention.ms", self.delete_retention_ms.to_string()),
            (
                "min.compaction.lag.ms",
                self.min_compaction_lag_ms.to_string(),
            ),
            (
                "max.compaction.lag.ms",
                self.max_compaction_lag_ms.to_string(),
            ),
            (
                "min.cleanable.dirty.ratio",
                self.min_cleanable_dirty_ratio.to_string(),
            ),
            (AGENT_GROUP_CONFIG, self.agent_group.clone()),
        ]
    }
}

fn parse_number<T: std::str::FromStr>(name: &str, value: &str) -> Result<T, String> {
    value
        .trim()
        .parse()
        .map_err(|_| format!("{name} must be an integer, not {value:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn configs(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parses_known_configs() {
        let c = TopicConfig::parse(&configs(&[
            ("message.timestamp.type", "LogAppendTime"),
            ("max.message.bytes", "2048"),
        ]))
        .unwrap();
        assert_eq!(c.timestamp_type, TimestampType::LogAppendTime);
        assert_eq!(c.max_message_bytes, 2048);
        assert_eq!(
            TopicConfig::parse(&BTreeMap::new()).unwrap(),
            TopicConfig::default()
        );
    }

    #[test]
    fn rejects_unknown_and_bad_values() {
        assert!(TopicConfig::parse(&configs(&[("segment.bytes", "1")])).is_err());
        assert!(TopicConfig::parse(&configs(&[("max.message.bytes", "big")])).is_err());
        assert!(TopicConfig::parse(&configs(&[("message.timestamp.type", "Now")])).is_err());
    }

    #[test]
    fn compaction_configs_parse_with_kafka_defaults_and_bounds() {
        let d = TopicConfig::default();
        assert_eq!(
            (
                d.delete_retention_ms,
                d.min_compaction_lag_ms,
                d.max_compaction_lag_ms
            ),
            (86_400_000, 0, i64::MAX)
        );
        assert_eq!(d.min_cleanable_dirty_ratio, 0.5);
        assert!(d.deletes() && !d.compacts());
        let c = TopicConfig::parse(&configs(&[
            ("cleanup.policy", "compact,delete"),
            ("delete.retention.ms", "1000"),
            ("min.compaction.lag.ms", "5"),
            ("max.compaction.lag.ms", "60000"),
            ("min.cleanable.dirty.ratio", "0.1"),
        ]))
        .unwrap();
        assert!(c.deletes() && c.compacts());
        assert_eq!(
            (
                c.delete_retention_ms,
                c.min_compaction_lag_ms,
                c.max_compaction_lag_ms
            ),
            (1000, 5, 60000)
        );
        assert_eq!(c.min_cleanable_dirty_ratio, 0.1);
        let only = TopicConfig::parse(&configs(&[("cleanup.policy", "compact")])).unwrap();
        assert!(only.compacts() && !only.deletes());
        for (name, bad) in [
            ("delete.retention.ms", "-1"),
            ("max.compaction.lag.ms", "0"),
            ("min.cleanable.dirty.ratio", "1.5"),
            ("min.cleanable.dirty.ratio", "NaN"),
            ("min.compaction.lag.ms", "soon"),
        ] {
            assert!(
                TopicConfig::parse(&configs(&[(name, bad)])).is_err(),
                "{name}={bad}"
            );
        }
        // Every config reported is one that parses back to the same value.
        let reported: BTreeMap<String, String> = c
            .entries()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        assert_eq!(TopicConfig::parse(&reported).unwrap(), c);
    }

    #[test]
    fn agent_groups_are_named_like_topics() {
        let c = TopicConfig::parse(&configs(&[(AGENT_GROUP_CONFIG, "analytics-1")])).unwrap();
        assert_eq!(c.agent_group, "analytics-1");
        assert_eq!(TopicConfig::default().agent_group, DEFAULT_AGENT_GROUP);
        for bad in ["", "a b", "é", &"x".repeat(65)] {
            assert!(
                TopicConfig::parse(&configs(&[(AGENT_GROUP_CONFIG, bad)])).is_err(),
                "{bad:?}"
            );
        }
    }
}
