//! InitProducerId: hands idempotent producers their id and epoch. Transactions are not
//! served: a transactional id is answered TRANSACTIONAL_ID_AUTHORIZATION_FAILED, as Produce
//! with a transactional id is, so a transactional client fails fast with a clear error
//! instead of retrying a coordinator that will never exist.

use std::sync::Arc;

use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse};
use streamhouse_agent::{Agent, AgentError};
use streamhouse_metadata::{ProducerEpoch, ProducerId};
use tracing::debug;

use crate::errors::init_producer_id_error_code;

pub(crate) async fn handle(
    agent: &Arc<Agent>,
    request: InitProducerIdRequest,
    version: i16,
) -> InitProducerIdResponse {
    let result = if request.transactional_id.is_some() {
        Err(AgentError::TransactionsUnsupported)
    } else {
        // v3+ (KIP-360) may name the producer's current id and epoch to have the epoch
        // bumped; -1 means "none" (and is all older versions can say).
        let current = (request.producer_id.0 >= 0 && request.producer_epoch >= 0).then_some((
            ProducerId(request.producer_id.0),
            ProducerEpoch(request.producer_epoch),
        ));
        agent.init_producer_id(current).await
    };
    match result {
        Ok((id, epoch)) => {
            debug!(producer_id = %id, epoch = %epoch, "producer id handed out");
            InitProducerIdResponse::default()
                .with_producer_id(id.0.into())
                .with_producer_epoch(epoch.0)
        }
        Err(e) => {
            debug!(error = %e, "InitProducerId refused");
            InitProducerIdResponse::default()
                .with_error_code(init_producer_id_error_code(&e, version).code())
                .with_producer_id((-1).into())
                .with_producer_epoch(-1)
        }
    }
}
