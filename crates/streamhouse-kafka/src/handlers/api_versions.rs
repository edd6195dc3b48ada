//! ApiVersions: advertises exactly the APIs and versions this server implements.

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{ApiKey, ApiVersionsResponse};

/// (API, lowest version, highest version) served. Produce starts at v3 and Fetch at v4, the
/// first versions that carry RecordBatch v2, the only format stored.
pub const SUPPORTED: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 9),
    (ApiKey::Fetch, 4, 12),
    (ApiKey::ListOffsets, 1, 6),
    (ApiKey::Metadata, 0, 12),
    (ApiKey::ApiVersions, 0, 3),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 6),
    (ApiKey::InitProducerId, 0, 5),
    (ApiKey::FindCoordinator, 0, 4),
    (ApiKey::JoinGroup, 0, 9),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 5),
    (ApiKey::OffsetCommit, 2, 8),
    (ApiKey::OffsetFetch, 1, 8),
    (ApiKey::DescribeGroups, 0, 5),
    (ApiKey::ListGroups, 0, 4),
    (ApiKey::DeleteGroups, 0, 2),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::AlterConfigs, 0, 2),
    (ApiKey::IncrementalAlterConfigs, 0, 1),
    (ApiKey::CreatePartitions, 0, 3),
    (ApiKey::DeleteRecords, 0, 2),
    (ApiKey::DescribeCluster, 0, 1),
    (ApiKey::OffsetForLeaderEpoch, 2, 4),
];

/// The API for a key, if we serve it.
pub(crate) fn supported_key(api_key: i16) -> Option<ApiKey> {
    SUPPORTED
        .iter()
        .find(|(key, _, _)| *key as i16 == api_key)
        .map(|(key, _, _)| *key)
}

/// The versions we serve of an API (empty range if none).
pub(crate) fn served_range(key: ApiKey) -> (i16, i16) {
    SUPPORTED
        .iter()
        .find(|(k, _, _)| *k == key)
        .map(|(_, min, max)| (*min, *max))
        .unwrap_or((0, -1))
}

fn api_keys() -> Vec<ApiVersion> {
    SUPPORTED
        .iter()
        .map(|(key, min, max)| {
            ApiVersion::default()
                .with_api_key(*key as i16)
                .with_min_version(*min)
                .with_max_version(*max)
        })
        .collect()
}

pub(crate) fn handle() -> ApiVersionsResponse {
    ApiVersionsResponse::default().with_api_keys(api_keys())
}

pub(crate) fn unsupported_version_response() -> ApiVersionsResponse {
    handle().with_error_code(ResponseError::UnsupportedVersion.code())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_advertised_version_is_one_the_codec_knows() {
        for (key, min, max) in SUPPORTED {
            let range = key.valid_versions();
            assert!(range.min <= *min && *max <= range.max, "{key:?}");
            assert!(min <= max);
        }
    }
}
