-- A stored message no longer records whether its deliveries were confirmed. The worker now
-- decides from the broker instead: a frame handed out again (redelivered) that finds its
-- message stored publishes it in full again, since the worker that stored it may have died
-- before publishing; a fresh frame that finds it stored is a client's resend and only gets
-- its sent receipt. That saves a second transaction per batch that only set the flag.
ALTER TABLE messages DROP COLUMN published;
