//! The scenarios' per-connection behaviors, free of I/O: each reacts to messages, phases
//! and its own deadlines by queueing frames (see [`crate::conn::Behavior`]).

mod broadcast;
mod chat;
mod echo;
mod idle;

use monoio::net::tcp::stream_poll::TcpStreamPoll;
use wire::{ErrorCode, ServerFrameRef};

use crate::conn::{self, Cx, Data, End};
use crate::plan::Work;
use crate::thread::ThreadCtx;

pub use broadcast::RawBroadcast;
pub use chat::Chat;
pub use echo::Echo;
pub use idle::Idle;

/// Drives connection `index` with its scenario's behavior.
pub async fn drive(ctx: &ThreadCtx, index: usize, io: TcpStreamPoll, leftover: Vec<u8>) -> End {
    let plan = ctx.plan();
    match &plan.work {
        Work::Chat { .. } => conn::drive(ctx, io, leftover, Chat::new(plan, index)).await,
        Work::Echo { .. } => conn::drive(ctx, io, leftover, Echo::new(plan, index)).await,
        Work::RawBroadcast { .. } => {
            conn::drive(ctx, io, leftover, RawBroadcast::new(plan, index)).await
        }
        Work::Idle { .. } | Work::Storm { .. } => {
            conn::drive(ctx, io, leftover, Idle::new(ctx)).await
        }
    }
}

/// Our protocol's frame in a data message; anything else is counted as an error.
fn server_frame<'a>(data: Data<'a>, cx: &mut Cx<'_>) -> Option<ServerFrameRef<'a>> {
    match data {
        Data::Binary(bytes) => match ServerFrameRef::access(bytes) {
            Ok(frame) => Some(frame),
            Err(error) => {
                cx.thread
                    .stats_mut()
                    .error(format!("malformed_server_frame: {error}"));
                None
            }
        },
        Data::Text(_) => {
            cx.thread
                .stats_mut()
                .error("unexpected_text_frame".to_owned());
            None
        }
    }
}

/// The label an error frame is counted under.
fn error_frame_label(code: u16) -> String {
    match ErrorCode::from_u16(code) {
        Some(known) => format!("error_frame_{code}_{}", known.name()),
        None => format!("error_frame_{code}"),
    }
}
