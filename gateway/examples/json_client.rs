//! A command-line WebSocket client that speaks the JSON form of the protocol: each line on
//! standard input is sent as a text frame, each frame from the gateway is printed as a line.
//!
//! ```sh
//! cargo run -p gateway --example json_client -- --user 1 --secret "$GATEWAY_JWT_SECRET"
//! {"type":"create_chat","client_msg_id":1,"kind":"direct","title":"","members":[2]}
//! {"type":"send","chat_id":1,"client_msg_id":2,"body":"hello"}
//! ```

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_tungstenite::tungstenite::Message;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
struct Args {
    /// The gateway's WebSocket URL.
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    url: String,
    /// The user to connect as (a token is minted for it).
    #[arg(long)]
    user: u64,
    /// The gateway's HS256 secret.
    #[arg(long, env = "GATEWAY_JWT_SECRET", hide_env_values = true)]
    secret: String,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs()
        + 3600;
    let token = gateway::auth::mint_hs256(args.secret.as_bytes(), args.user, exp);
    // `format=json` makes the gateway answer in text frames from the first one (welcome).
    let url = format!("{}?format=json&token={token}", args.url);
    let (socket, _) = tokio_tungstenite::connect_async(url).await?;
    let (mut sink, mut stream) = socket.split();
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    loop {
        tokio::select! {
            line = lines.next_line() => match line? {
                Some(line) if !line.trim().is_empty() => sink.send(Message::Text(line.into())).await?,
                Some(_) => {}
                None => break,
            },
            frame = stream.next() => match frame {
                Some(Ok(Message::Text(text))) => println!("{text}"),
                Some(Ok(Message::Close(close))) => {
                    eprintln!("closed: {close:?}");
                    break;
                }
                Some(Ok(_)) => {}
                Some(Err(error)) => return Err(error.into()),
                None => break,
            },
        }
    }
    Ok(())
}
