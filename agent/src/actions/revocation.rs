//! `revocation`: take a newer issuer-signed revocation list pushed by an operator, and
//! keep it in the state dir so it survives a restart. An older (or the same) list
//! changes nothing and says which one is held.

use super::{Action, ActionContext, ActionError, blocking};
use crate::revocation::{PushError, Update};
use gearmq_schemas::Status;
use gearmq_schemas::actions::{RevocationArgs, RevocationResult};
use tracing::{info, warn};

/// The `revocation` action.
#[derive(Debug)]
pub struct Revocation;

impl Action for Revocation {
    const NAME: &'static str = "revocation";
    type Args = RevocationArgs;
    type Output = RevocationResult;

    async fn apply(
        args: RevocationArgs,
        ctx: &ActionContext,
    ) -> Result<RevocationResult, ActionError> {
        let revocations = ctx.services.revocations.clone();
        let list = args.list.into_vec();
        let caller = ctx.request.caller.clone();
        match blocking(move || revocations.push(&list)).await? {
            Ok(Update::Taken { sequence }) => {
                info!(sequence, caller = %caller, "revocation list taken from a request");
                Ok(RevocationResult {
                    sequence,
                    changed: true,
                })
            }
            Ok(Update::NotNewer { offered, held }) => {
                info!(offered, held, caller = %caller, "pushed revocation list is not newer than the one held; ignored");
                Ok(RevocationResult {
                    sequence: held,
                    changed: false,
                })
            }
            Err(PushError::Invalid(e)) => Err(ActionError::new(
                Status::InvalidData,
                format!("invalid args.list: {e}"),
            )),
            Err(PushError::NotPersisted(e)) => {
                warn!(error = %e, "revocation list not saved");
                Err(ActionError::new(Status::UnknownError, e.to_string()))
            }
        }
    }
}
