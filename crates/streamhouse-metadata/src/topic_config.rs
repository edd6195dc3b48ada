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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicConfig {
    /// `message.timestamp.type`: enforced at append.
    pub timestamp_type: TimestampType,
    /// `max.message.bytes`: the largest record batch accepted, enforced at append.
    pub max_message_bytes: i32,
    /// `retention.ms`: enforced by retention (-1: unlimited).
    pub retention_ms: i64,
    /// `retention.bytes`: enforced by retention (-1: unlimited).
    pub retention_bytes: i64,
    /// `cleanup.policy`: retention trims topics whose policy includes `delete`; log
    /// compaction by key (`compact`) is not done yet.
    pub cleanup_policy: String,
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
            agent_group: DEFAULT_AGENT_GROUP.to_string(),
        }
    }
}

impl TopicConfig {
    /// Config names we accept.
    pub const KNOWN: [&'static str; 6] = [
        "message.timestamp.type",
        "max.message.bytes",
        "retention.ms",
        "retention.bytes",
        "cleanup.policy",
        AGENT_GROUP_CONFIG,
    ];

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
