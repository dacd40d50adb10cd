//! Publishing many messages in order without a loop turn per publish.

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::task::Poll;

use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Channel, PublisherConfirm};

/// A publish whose frames are queued on its channel. It resolves once lapin's I/O loop has
/// written them, to the confirm to await (if the channel is in confirm mode).
pub type QueuedPublish = Pin<Box<dyn Future<Output = lapin::Result<PublisherConfirm>> + Send>>;

/// Starts a publish and polls it once, which queues its frames on the channel (and numbers
/// its confirm) right now.
///
/// lapin's `basic_publish` resolves only once its I/O loop has written the frames, so
/// awaiting each publish in turn costs a loop turn per message. Publishes queued one after
/// another with this keep their order on the channel, and their writes and confirms can be
/// awaited together afterwards, or in the background.
pub async fn queue_publish(
    channel: &Channel,
    exchange: String,
    routing_key: String,
    body: impl AsRef<[u8]> + Send + 'static,
    properties: BasicProperties,
) -> QueuedPublish {
    let channel = channel.clone();
    let mut publish: QueuedPublish = Box::pin(async move {
        channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                body.as_ref(),
                properties,
            )
            .await
    });
    match poll_fn(|cx| Poll::Ready(publish.as_mut().poll(cx))).await {
        Poll::Ready(written) => Box::pin(std::future::ready(written)),
        Poll::Pending => publish,
    }
}
