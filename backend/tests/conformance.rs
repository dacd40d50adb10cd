//! One table of protocol cases, run against both engines: the memory engine (a gateway
//! alone, in-process) and the amqp engine (a gateway, RabbitMQ, a backend worker,
//! PostgreSQL and Redis, each in a private corner). Both must decide every case the same
//! way, as PROTOCOL.md says.
//!
//! A case is a script of lines in the JSON form of PROTOCOL.md:
//!
//! * `A> {json}`: the connection `A` sends the client frame.
//! * `A< {json}`: the next server frame `A` receives has every field the pattern gives
//!   (fields left out are not compared; lists are compared whole, item by item).
//!
//! A connection is an upper-case letter, the user it is connected as, optionally followed
//! by a digit for another session of that user. `$A`, `$B`, ... stand for the users' ids,
//! fresh for each case. Any other `$name` stands for a number the server chose (a chat id):
//! unknown at its first appearance in a pattern, it takes the value found there, and every
//! later appearance means that value. `"_"` in a pattern matches any value. After the last
//! line, no connection may receive anything more.
//!
//! The memory engine is driven through real sockets too: its decisions are made inside a
//! core with its sessions and mailboxes, and one client-side driver for both engines keeps
//! the table the single definition of the expected behaviour.

mod full_stack;

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use clap::Parser;
use full_stack::{SECRET, SHARDS, clean_up, database_url, private_corner, upgrade_request};
use futures_util::{SinkExt, StreamExt};
use gateway::Gateway;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{Bytes, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;
use wire::{ClientFrame, ServerFrame};

/// The system's broker, which the tests share (each in its own prefix).
const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// The bound on chats per user both engines run with, low enough for a case to reach.
const MAX_CHATS_PER_USER: &str = "3";

/// The per-user send budget both engines run with: a burst above what any other case sends
/// as one user (13 frames), low enough for a case to reach, and a rate slow enough that no
/// frame comes back within a case.
const USER_BUDGET: [&str; 4] = ["--user-frame-burst", "16", "--user-frames-per-second", "1"];

struct Case {
    name: &'static str,
    script: &'static str,
}

const CASES: &[Case] = &[
    Case {
        name: "H2: the sessions of one user share one send budget; another user has its own",
        script: r#"
            A1> {"type":"ping","nonce":1}
            A1< {"type":"pong","nonce":1}
            A2> {"type":"ping","nonce":2}
            A2< {"type":"pong","nonce":2}
            A1> {"type":"ping","nonce":3}
            A1< {"type":"pong","nonce":3}
            A2> {"type":"ping","nonce":4}
            A2< {"type":"pong","nonce":4}
            A1> {"type":"ping","nonce":5}
            A1< {"type":"pong","nonce":5}
            A2> {"type":"ping","nonce":6}
            A2< {"type":"pong","nonce":6}
            A1> {"type":"ping","nonce":7}
            A1< {"type":"pong","nonce":7}
            A2> {"type":"ping","nonce":8}
            A2< {"type":"pong","nonce":8}
            A1> {"type":"ping","nonce":9}
            A1< {"type":"pong","nonce":9}
            A2> {"type":"ping","nonce":10}
            A2< {"type":"pong","nonce":10}
            A1> {"type":"ping","nonce":11}
            A1< {"type":"pong","nonce":11}
            A2> {"type":"ping","nonce":12}
            A2< {"type":"pong","nonce":12}
            A1> {"type":"ping","nonce":13}
            A1< {"type":"pong","nonce":13}
            A2> {"type":"ping","nonce":14}
            A2< {"type":"pong","nonce":14}
            A1> {"type":"ping","nonce":15}
            A1< {"type":"pong","nonce":15}
            A2> {"type":"ping","nonce":16}
            A2< {"type":"pong","nonce":16}
            A1> {"type":"presence_query","client_msg_id":17,"users":[$B]}
            A1< {"type":"error","code":4029,"client_msg_id":17}
            A2> {"type":"presence_query","client_msg_id":18,"users":[$B]}
            A2< {"type":"error","code":4029,"client_msg_id":18}
            B> {"type":"ping","nonce":19}
            B< {"type":"pong","nonce":19}
        "#,
    },
    Case {
        name: "a created group is announced to every member, and members talk in it",
        script: r#"
            A> {"type":"create_chat","client_msg_id":1,"kind":"group","title":"g","members":[$B,$C]}
            A< {"type":"chat_created","client_msg_id":1,"chat_id":$g,"kind":"group","title":"g","creator":$A,"members":[$A,$B,$C]}
            B< {"type":"chat_created","client_msg_id":1,"chat_id":$g,"creator":$A,"members":[$A,$B,$C]}
            C< {"type":"chat_created","client_msg_id":1,"chat_id":$g}
            B> {"type":"send","chat_id":$g,"client_msg_id":2,"body":"hi"}
            B< {"type":"receipt","chat_id":$g,"kind":"sent","seq":1,"user_id":$B,"client_msg_id":2}
            A< {"type":"message","chat_id":$g,"seq":1,"sender":$B,"client_msg_id":2,"body":"hi"}
            C< {"type":"message","chat_id":$g,"seq":1,"sender":$B}
        "#,
    },
    Case {
        name: "M4: an invite-only group refuses a stranger's join and sync with 4030",
        script: r#"
            A> {"type":"create_chat","client_msg_id":1,"kind":"group","title":"g","members":[$B]}
            A< {"type":"chat_created","client_msg_id":1,"chat_id":$g}
            B< {"type":"chat_created","client_msg_id":1,"chat_id":$g}
            A> {"type":"send","chat_id":$g,"client_msg_id":2,"body":"secret"}
            A< {"type":"receipt","chat_id":$g,"kind":"sent","seq":1}
            B< {"type":"message","chat_id":$g,"seq":1,"body":"secret"}
            C> {"type":"join","client_msg_id":3,"chat_id":$g}
            C< {"type":"error","code":4030,"client_msg_id":3}
            C> {"type":"sync","client_msg_id":4,"chat_id":$g,"after_seq":0,"limit":10}
            C< {"type":"error","code":4030,"client_msg_id":4}
        "#,
    },
    Case {
        name: "anyone may join a public group; joining again answers joined again",
        script: r#"
            A> {"type":"create_chat","client_msg_id":1,"kind":"public_group","title":"p","members":[$B]}
            A< {"type":"chat_created","client_msg_id":1,"chat_id":$g,"kind":"public_group","members":[$A,$B]}
            B< {"type":"chat_created","client_msg_id":1,"chat_id":$g,"kind":"public_group"}
            C> {"type":"sync","client_msg_id":2,"chat_id":$g,"after_seq":0,"limit":10}
            C< {"type":"error","code":4030,"client_msg_id":2}
            C> {"type":"join","client_msg_id":3,"chat_id":$g}
            A< {"type":"joined","client_msg_id":3,"chat_id":$g,"user_id":$C}
            B< {"type":"joined","client_msg_id":3,"chat_id":$g,"user_id":$C}
            C< {"type":"joined","client_msg_id":3,"chat_id":$g,"user_id":$C}
            C> {"type":"sync","client_msg_id":4,"chat_id":$g,"after_seq":0,"limit":10}
            C< {"type":"sync_batch","client_msg_id":4,"chat_id":$g,"messages":[],"has_more":false}
            C> {"type":"join","client_msg_id":3,"chat_id":$g}
            A< {"type":"joined","client_msg_id":3,"chat_id":$g,"user_id":$C}
            B< {"type":"joined","client_msg_id":3,"chat_id":$g,"user_id":$C}
            C< {"type":"joined","client_msg_id":3,"chat_id":$g,"user_id":$C}
        "#,
    },
    Case {
        name: "any member adds members: the members hear members_added, the added get chat_created; a resend changes nothing",
        script: r#"
            A> {"type":"create_chat","client_msg_id":1,"kind":"group","title":"g","members":[$B]}
            A< {"type":"chat_created","client_msg_id":1,"chat_id":$g}
            B< {"type":"chat_created","client_msg_id":1,"chat_id":$g}
            B> {"type":"add_members","client_msg_id":2,"chat_id":$g,"users":[$D,$C,$A,$D]}
            A< {"type":"members_added","client_msg_id":2,"chat_id":$g,"by":$B,"users":[$A,$C,$D]}
            B< {"type":"members_added","client_msg_id":2,"chat_id":$g,"by":$B,"users":[$A,$C,$D]}
            C< {"type":"chat_created","client_msg_id":2,"chat_id":$g,"kind":"group","title":"g","creator":$A,"members":[$A,$B,$C,$D]}
            D< {"type":"chat_created","client_msg_id":2,"chat_id":$g,"creator":$A,"members":[$A,$B,$C,$D]}
            C> {"type":"send","chat_id":$g,"client_msg_id":3,"body":"thanks"}
            C< {"type":"receipt","chat_id":$g,"kind":"sent","seq":1}
            A< {"type":"message","chat_id":$g,"seq":1,"sender":$C}
            B< {"type":"message","chat_id":$g,"seq":1,"sender":$C}
            D< {"type":"message","chat_id":$g,"seq":1,"sender":$C}
            B> {"type":"add_members","client_msg_id":2,"chat_id":$g,"users":[$D,$C,$A,$D]}
            A< {"type":"members_added","client_msg_id":2,"chat_id":$g,"by":$B,"users":[$A,$C,$D]}
            B< {"type":"members_added","client_msg_id":2,"chat_id":$g,"by":$B,"users":[$A,$C,$D]}
            C< {"type":"members_added","client_msg_id":2,"chat_id":$g,"by":$B,"users":[$A,$C,$D]}
            D< {"type":"members_added","client_msg_id":2,"chat_id":$g,"by":$B,"users":[$A,$C,$D]}
            E> {"type":"add_members","client_msg_id":4,"chat_id":$g,"users":[$E]}
            E< {"type":"error","code":4030,"client_msg_id":4}
        "#,
    },
    Case {
        name: "only an admin removes members (4031 for a member, 4030 for a stranger), and the removed hear it",
        script: r#"
            A> {"type":"create_chat","client_msg_id":1,"kind":"group","title":"g","members":[$B,$C]}
            A< {"type":"chat_created","client_msg_id":1,"chat_id":$g}
            B< {"type":"chat_created","client_msg_id":1,"chat_id":$g}
            C< {"type":"chat_created","client_msg_id":1,"chat_id":$g}
            B> {"type":"remove_members","client_msg_id":2,"chat_id":$g,"users":[$C]}
            B< {"type":"error","code":4031,"client_msg_id":2}
            D> {"type":"remove_members","client_msg_id":3,"chat_id":$g,"users":[$C]}
            D< {"type":"error","code":4030,"client_msg_id":3}
            A> {"type":"remove_members","client_msg_id":4,"chat_id":$g,"users":[$D,$C]}
            A< {"type":"members_removed","client_msg_id":4,"chat_id":$g,"by":$A,"users":[$C,$D]}
            B< {"type":"members_removed","client_msg_id":4,"chat_id":$g,"by":$A,"users":[$C,$D]}
            C< {"type":"members_removed","client_msg_id":4,"chat_id":$g,"by":$A,"users":[$C,$D]}
            C> {"type":"send","chat_id":$g,"client_msg_id":5,"body":"still here?"}
            C< {"type":"error","code":4030,"client_msg_id":5}
            A> {"type":"remove_members","client_msg_id":4,"chat_id":$g,"users":[$D,$C]}
            A< {"type":"members_removed","client_msg_id":4,"chat_id":$g,"by":$A,"users":[$C,$D]}
            B< {"type":"members_removed","client_msg_id":4,"chat_id":$g,"by":$A,"users":[$C,$D]}
        "#,
    },
    Case {
        name: "a group whose admin left keeps working, but nobody can remove anyone",
        script: r#"
            A> {"type":"create_chat","client_msg_id":1,"kind":"group","title":"g","members":[$B,$C]}
            A< {"type":"chat_created","client_msg_id":1,"chat_id":$g}
            B< {"type":"chat_created","client_msg_id":1,"chat_id":$g}
            C< {"type":"chat_created","client_msg_id":1,"chat_id":$g}
            A> {"type":"leave","client_msg_id":2,"chat_id":$g}
            A< {"type":"left","client_msg_id":2,"chat_id":$g,"user_id":$A}
            B< {"type":"left","client_msg_id":2,"chat_id":$g,"user_id":$A}
            C< {"type":"left","client_msg_id":2,"chat_id":$g,"user_id":$A}
            B> {"type":"remove_members","client_msg_id":3,"chat_id":$g,"users":[$C]}
            B< {"type":"error","code":4031,"client_msg_id":3}
            B> {"type":"add_members","client_msg_id":4,"chat_id":$g,"users":[$D]}
            B< {"type":"members_added","client_msg_id":4,"chat_id":$g,"by":$B,"users":[$D]}
            C< {"type":"members_added","client_msg_id":4,"chat_id":$g,"by":$B,"users":[$D]}
            D< {"type":"chat_created","client_msg_id":4,"chat_id":$g,"creator":$A,"members":[$B,$C,$D]}
        "#,
    },
    Case {
        name: "the members of a direct chat never change",
        script: r#"
            A> {"type":"create_chat","client_msg_id":1,"kind":"direct","title":"","members":[$B]}
            A< {"type":"chat_created","client_msg_id":1,"chat_id":$d,"kind":"direct","members":[$A,$B]}
            B< {"type":"chat_created","client_msg_id":1,"chat_id":$d,"kind":"direct"}
            C> {"type":"join","client_msg_id":2,"chat_id":$d}
            C< {"type":"error","code":4090,"client_msg_id":2}
            A> {"type":"add_members","client_msg_id":3,"chat_id":$d,"users":[$C]}
            A< {"type":"error","code":4090,"client_msg_id":3}
            A> {"type":"remove_members","client_msg_id":4,"chat_id":$d,"users":[$B]}
            A< {"type":"error","code":4090,"client_msg_id":4}
            A> {"type":"leave","client_msg_id":5,"chat_id":$d}
            A< {"type":"error","code":4090,"client_msg_id":5}
            C> {"type":"leave","client_msg_id":6,"chat_id":$d}
            C< {"type":"error","code":4030,"client_msg_id":6}
            A> {"type":"create_chat","client_msg_id":7,"kind":"direct","title":"","members":[$B,$C]}
            A< {"type":"error","code":4090,"client_msg_id":7}
        "#,
    },
    Case {
        name: "a stranger's typing, ack and send are refused; an unknown chat is 4040",
        script: r#"
            A> {"type":"create_chat","client_msg_id":1,"kind":"public_group","title":"g","members":[]}
            A< {"type":"chat_created","client_msg_id":1,"chat_id":$g,"members":[$A]}
            C> {"type":"typing","chat_id":$g}
            C< {"type":"error","code":4030,"client_msg_id":null}
            C> {"type":"ack_read","chat_id":$g,"seq":1}
            C< {"type":"error","code":4030,"client_msg_id":null}
            C> {"type":"send","chat_id":$g,"client_msg_id":2,"body":"hello?"}
            C< {"type":"error","code":4030,"client_msg_id":2}
            C> {"type":"send","chat_id":9000000000,"client_msg_id":3,"body":"anyone?"}
            C< {"type":"error","code":4040,"client_msg_id":3}
            C> {"type":"join","client_msg_id":4,"chat_id":9000000000}
            C< {"type":"error","code":4040,"client_msg_id":4}
        "#,
    },
    Case {
        name: "presence shows the users who share a chat, and strangers as never seen",
        script: r#"
            A> {"type":"create_chat","client_msg_id":1,"kind":"group","title":"g","members":[$B]}
            A< {"type":"chat_created","client_msg_id":1,"chat_id":$g}
            B< {"type":"chat_created","client_msg_id":1,"chat_id":$g}
            A> {"type":"presence_query","client_msg_id":2,"users":[$A,$B,$C,$D]}
            A< {"type":"presence","client_msg_id":2,"users":[{"user_id":$A,"online":true,"last_seen_us":"_"},{"user_id":$B,"online":true,"last_seen_us":"_"},{"user_id":$C,"online":false,"last_seen_us":0},{"user_id":$D,"online":false,"last_seen_us":0}]}
            C> {"type":"presence_query","client_msg_id":3,"users":[$A,$B]}
            C< {"type":"presence","client_msg_id":3,"users":[{"user_id":$A,"online":false,"last_seen_us":0},{"user_id":$B,"online":false,"last_seen_us":0}]}
            B> {"type":"leave","client_msg_id":4,"chat_id":$g}
            A< {"type":"left","client_msg_id":4,"chat_id":$g,"user_id":$B}
            B< {"type":"left","client_msg_id":4,"chat_id":$g,"user_id":$B}
            A> {"type":"presence_query","client_msg_id":5,"users":[$B]}
            A< {"type":"presence","client_msg_id":5,"users":[{"user_id":$B,"online":false,"last_seen_us":0}]}
        "#,
    },
    Case {
        name: "a direct chat is unique per pair: creating it again, by either user, answers the same chat",
        script: r#"
            A> {"type":"create_chat","client_msg_id":1,"kind":"direct","title":"","members":[$B]}
            A< {"type":"chat_created","client_msg_id":1,"chat_id":$d,"creator":$A,"members":[$A,$B]}
            B< {"type":"chat_created","client_msg_id":1,"chat_id":$d}
            A> {"type":"create_chat","client_msg_id":2,"kind":"direct","title":"","members":[$B]}
            A< {"type":"chat_created","client_msg_id":2,"chat_id":$d,"creator":$A,"members":[$A,$B]}
            B< {"type":"chat_created","client_msg_id":2,"chat_id":$d}
            B> {"type":"create_chat","client_msg_id":3,"kind":"direct","title":"","members":[$A]}
            A< {"type":"chat_created","client_msg_id":3,"chat_id":$d,"creator":$A}
            B< {"type":"chat_created","client_msg_id":3,"chat_id":$d,"creator":$A,"members":[$A,$B]}
        "#,
    },
    Case {
        name: "F2: a resent create_chat answers the original chat, from any session of its user",
        script: r#"
            A> {"type":"create_chat","client_msg_id":1,"kind":"group","title":"t","members":[$B]}
            A< {"type":"chat_created","client_msg_id":1,"chat_id":$g}
            A2< {"type":"chat_created","client_msg_id":1,"chat_id":$g}
            B< {"type":"chat_created","client_msg_id":1,"chat_id":$g}
            A2> {"type":"create_chat","client_msg_id":1,"kind":"group","title":"t","members":[$B]}
            A< {"type":"chat_created","client_msg_id":1,"chat_id":$g,"title":"t","members":[$A,$B]}
            A2< {"type":"chat_created","client_msg_id":1,"chat_id":$g}
            B< {"type":"chat_created","client_msg_id":1,"chat_id":$g}
        "#,
    },
    Case {
        name: "F3: a stranger's leave gets 4030; a resent leave is answered to the leaver alone",
        script: r#"
            A> {"type":"create_chat","client_msg_id":1,"kind":"group","title":"g","members":[$B,$C]}
            A< {"type":"chat_created","client_msg_id":1,"chat_id":$g}
            B< {"type":"chat_created","client_msg_id":1,"chat_id":$g}
            C< {"type":"chat_created","client_msg_id":1,"chat_id":$g}
            D> {"type":"leave","client_msg_id":2,"chat_id":$g}
            D< {"type":"error","code":4030,"client_msg_id":2}
            C> {"type":"leave","client_msg_id":3,"chat_id":$g}
            A< {"type":"left","client_msg_id":3,"chat_id":$g,"user_id":$C}
            B< {"type":"left","client_msg_id":3,"chat_id":$g,"user_id":$C}
            C< {"type":"left","client_msg_id":3,"chat_id":$g,"user_id":$C}
            C> {"type":"leave","client_msg_id":3,"chat_id":$g}
            C< {"type":"left","client_msg_id":3,"chat_id":$g,"user_id":$C}
            C> {"type":"leave","client_msg_id":4,"chat_id":$g}
            C< {"type":"error","code":4030,"client_msg_id":4}
        "#,
    },
    Case {
        name: "a resent send is stored and delivered once; a resent sync answers the same page",
        script: r#"
            A> {"type":"create_chat","client_msg_id":1,"kind":"group","title":"g","members":[$B]}
            A< {"type":"chat_created","client_msg_id":1,"chat_id":$g}
            B< {"type":"chat_created","client_msg_id":1,"chat_id":$g}
            A> {"type":"send","chat_id":$g,"client_msg_id":5,"body":"once"}
            A< {"type":"receipt","chat_id":$g,"kind":"sent","seq":1,"client_msg_id":5}
            B< {"type":"message","chat_id":$g,"seq":1,"body":"once"}
            A> {"type":"send","chat_id":$g,"client_msg_id":5,"body":"once"}
            A< {"type":"receipt","chat_id":$g,"kind":"sent","seq":1,"client_msg_id":5}
            A> {"type":"send","chat_id":$g,"client_msg_id":6,"body":"twice?"}
            A< {"type":"receipt","chat_id":$g,"kind":"sent","seq":2,"client_msg_id":6}
            B< {"type":"message","chat_id":$g,"seq":2,"body":"twice?"}
            B> {"type":"sync","client_msg_id":7,"chat_id":$g,"after_seq":0,"limit":1}
            B< {"type":"sync_batch","client_msg_id":7,"chat_id":$g,"messages":[{"seq":1,"sender":$A,"client_msg_id":5,"body":"once"}],"has_more":true}
            B> {"type":"sync","client_msg_id":7,"chat_id":$g,"after_seq":0,"limit":1}
            B< {"type":"sync_batch","client_msg_id":7,"chat_id":$g,"messages":[{"seq":1,"body":"once"}],"has_more":true}
        "#,
    },
    Case {
        name: "history pages back from before_seq newest first; after_seq with before_seq is refused with 4090",
        script: r#"
            A> {"type":"create_chat","client_msg_id":1,"kind":"group","title":"g","members":[$B]}
            A< {"type":"chat_created","client_msg_id":1,"chat_id":$g}
            B< {"type":"chat_created","client_msg_id":1,"chat_id":$g}
            A> {"type":"send","chat_id":$g,"client_msg_id":2,"body":"one"}
            A< {"type":"receipt","chat_id":$g,"kind":"sent","seq":1}
            B< {"type":"message","chat_id":$g,"seq":1}
            A> {"type":"send","chat_id":$g,"client_msg_id":3,"body":"two"}
            A< {"type":"receipt","chat_id":$g,"kind":"sent","seq":2}
            B< {"type":"message","chat_id":$g,"seq":2}
            A> {"type":"send","chat_id":$g,"client_msg_id":4,"body":"three"}
            A< {"type":"receipt","chat_id":$g,"kind":"sent","seq":3}
            B< {"type":"message","chat_id":$g,"seq":3}
            B> {"type":"sync","client_msg_id":5,"chat_id":$g,"after_seq":0,"before_seq":18446744073709551615,"limit":2}
            B< {"type":"sync_batch","client_msg_id":5,"chat_id":$g,"messages":[{"seq":3,"body":"three"},{"seq":2,"body":"two"}],"has_more":true}
            B> {"type":"sync","client_msg_id":6,"chat_id":$g,"after_seq":0,"before_seq":2,"limit":2}
            B< {"type":"sync_batch","client_msg_id":6,"chat_id":$g,"messages":[{"seq":1,"sender":$A,"client_msg_id":2,"body":"one"}],"has_more":false}
            B> {"type":"sync","client_msg_id":7,"chat_id":$g,"after_seq":0,"before_seq":1,"limit":2}
            B< {"type":"sync_batch","client_msg_id":7,"chat_id":$g,"messages":[],"has_more":false}
            B> {"type":"sync","client_msg_id":8,"chat_id":$g,"after_seq":1,"limit":5}
            B< {"type":"sync_batch","client_msg_id":8,"chat_id":$g,"messages":[{"seq":2},{"seq":3}],"has_more":false}
            B> {"type":"sync","client_msg_id":9,"chat_id":$g,"after_seq":1,"before_seq":3,"limit":5}
            B< {"type":"error","code":4090,"client_msg_id":9}
            C> {"type":"sync","client_msg_id":10,"chat_id":$g,"after_seq":0,"before_seq":3,"limit":5}
            C< {"type":"error","code":4030,"client_msg_id":10}
        "#,
    },
    Case {
        name: "list_chats pages the asker's chats, most recent activity first, with its watermarks and unread count",
        script: r#"
            A> {"type":"create_chat","client_msg_id":1,"kind":"group","title":"one","members":[$B]}
            A< {"type":"chat_created","client_msg_id":1,"chat_id":$one}
            B< {"type":"chat_created","client_msg_id":1,"chat_id":$one}
            A> {"type":"create_chat","client_msg_id":2,"kind":"public_group","title":"two","members":[$B]}
            A< {"type":"chat_created","client_msg_id":2,"chat_id":$two}
            B< {"type":"chat_created","client_msg_id":2,"chat_id":$two}
            A> {"type":"send","chat_id":$one,"client_msg_id":3,"body":"hi"}
            A< {"type":"receipt","chat_id":$one,"kind":"sent","seq":1}
            B< {"type":"message","chat_id":$one,"seq":1,"server_time_us":$t}
            B> {"type":"list_chats","client_msg_id":4,"limit":1}
            B< {"type":"chat_list","client_msg_id":4,"chats":[{"chat_id":$one,"kind":"group","title":"one","member_count":2,"last_seq":1,"last_activity_us":$t,"delivered_seq":0,"read_seq":0,"unread":1}],"has_more":true}
            B> {"type":"list_chats","client_msg_id":5,"limit":5,"before_activity_us":$t,"before_chat_id":$one}
            B< {"type":"chat_list","client_msg_id":5,"chats":[{"chat_id":$two,"kind":"public_group","title":"two","member_count":2,"last_seq":0,"delivered_seq":0,"read_seq":0,"unread":0}],"has_more":false}
            A> {"type":"list_chats","client_msg_id":6,"limit":100}
            A< {"type":"chat_list","client_msg_id":6,"chats":[{"chat_id":$one,"unread":1},{"chat_id":$two}],"has_more":false}
            C> {"type":"list_chats","client_msg_id":7,"limit":5}
            C< {"type":"chat_list","client_msg_id":7,"chats":[],"has_more":false}
            C> {"type":"list_chats","client_msg_id":8,"limit":101}
            C< {"type":"error","code":4004,"client_msg_id":8}
        "#,
    },
    Case {
        name: "L1: chats per user are bounded; a chat whose last member leaves is gone and frees its place",
        script: r#"
            A> {"type":"create_chat","client_msg_id":1,"kind":"public_group","title":"one","members":[]}
            A< {"type":"chat_created","client_msg_id":1,"chat_id":$one}
            A> {"type":"create_chat","client_msg_id":2,"kind":"group","title":"two","members":[]}
            A< {"type":"chat_created","client_msg_id":2,"chat_id":$two}
            A> {"type":"create_chat","client_msg_id":3,"kind":"direct","title":"","members":[$B]}
            A< {"type":"chat_created","client_msg_id":3,"chat_id":$three}
            B< {"type":"chat_created","client_msg_id":3,"chat_id":$three}
            A> {"type":"create_chat","client_msg_id":4,"kind":"group","title":"four","members":[]}
            A< {"type":"error","code":4004,"client_msg_id":4}
            A> {"type":"create_chat","client_msg_id":2,"kind":"group","title":"two","members":[]}
            A< {"type":"chat_created","client_msg_id":2,"chat_id":$two}
            B> {"type":"create_chat","client_msg_id":5,"kind":"direct","title":"","members":[$A]}
            A< {"type":"chat_created","client_msg_id":5,"chat_id":$three}
            B< {"type":"chat_created","client_msg_id":5,"chat_id":$three}
            A> {"type":"leave","client_msg_id":6,"chat_id":$one}
            A< {"type":"left","client_msg_id":6,"chat_id":$one,"user_id":$A}
            B> {"type":"join","client_msg_id":7,"chat_id":$one}
            B< {"type":"error","code":4040,"client_msg_id":7}
            A> {"type":"create_chat","client_msg_id":4,"kind":"group","title":"four","members":[]}
            A< {"type":"chat_created","client_msg_id":4,"chat_id":$four,"title":"four"}
        "#,
    },
    Case {
        name: "a user's own entries reach its other sessions (the sending one gets its receipt), and so does its read watermark",
        script: r#"
            A> {"type":"create_chat","client_msg_id":1,"kind":"group","title":"g","members":[$B]}
            A< {"type":"chat_created","client_msg_id":1,"chat_id":$g}
            A2< {"type":"chat_created","client_msg_id":1,"chat_id":$g}
            B< {"type":"chat_created","client_msg_id":1,"chat_id":$g}
            A> {"type":"send","chat_id":$g,"client_msg_id":2,"body":"from my phone"}
            A< {"type":"receipt","chat_id":$g,"kind":"sent","seq":1,"user_id":$A,"client_msg_id":2}
            A2< {"type":"message","chat_id":$g,"seq":1,"sender":$A,"client_msg_id":2,"body":"from my phone"}
            A2< {"type":"receipt","chat_id":$g,"kind":"sent","seq":1,"user_id":$A,"client_msg_id":2}
            B< {"type":"message","chat_id":$g,"seq":1,"sender":$A}
            B> {"type":"send","chat_id":$g,"client_msg_id":3,"body":"hi, both of you"}
            B< {"type":"receipt","chat_id":$g,"kind":"sent","seq":2}
            A< {"type":"message","chat_id":$g,"seq":2,"sender":$B}
            A2< {"type":"message","chat_id":$g,"seq":2,"sender":$B}
            A2> {"type":"ack_read","chat_id":$g,"seq":2}
            A< {"type":"receipt","chat_id":$g,"kind":"read","seq":2,"user_id":$A,"client_msg_id":null}
            B< {"type":"receipt","chat_id":$g,"kind":"read","seq":2,"user_id":$A,"client_msg_id":null}
            A> {"type":"list_chats","client_msg_id":4,"limit":5}
            A< {"type":"chat_list","client_msg_id":4,"chats":[{"chat_id":$g,"last_seq":2,"read_seq":2,"unread":0}],"has_more":false}
        "#,
    },
    Case {
        name: "edits, deletes and reactions are chat entries with their own seq; only the sender edits or deletes; sync returns them in order",
        script: r#"
            A> {"type":"create_chat","client_msg_id":1,"kind":"group","title":"g","members":[$B,$C]}
            A< {"type":"chat_created","client_msg_id":1,"chat_id":$g}
            B< {"type":"chat_created","client_msg_id":1,"chat_id":$g}
            C< {"type":"chat_created","client_msg_id":1,"chat_id":$g}
            A> {"type":"send","chat_id":$g,"client_msg_id":2,"body":"see you at 10"}
            A< {"type":"receipt","chat_id":$g,"kind":"sent","seq":1}
            B< {"type":"message","chat_id":$g,"seq":1}
            C< {"type":"message","chat_id":$g,"seq":1}
            B> {"type":"edit","chat_id":$g,"client_msg_id":3,"target_seq":1,"body":"hijacked"}
            B< {"type":"error","code":4031,"client_msg_id":3}
            A> {"type":"edit","chat_id":$g,"client_msg_id":4,"target_seq":1,"body":"see you at 11"}
            A< {"type":"receipt","chat_id":$g,"kind":"sent","seq":2,"client_msg_id":4}
            B< {"type":"message","chat_id":$g,"seq":2,"sender":$A,"client_msg_id":4,"body":"see you at 11","kind":"edit","target_seq":1}
            C< {"type":"message","chat_id":$g,"seq":2,"kind":"edit","target_seq":1}
            B> {"type":"react","chat_id":$g,"client_msg_id":5,"target_seq":1,"emoji":"👍"}
            B< {"type":"receipt","chat_id":$g,"kind":"sent","seq":3,"client_msg_id":5}
            A< {"type":"message","chat_id":$g,"seq":3,"sender":$B,"body":"👍","kind":"react","target_seq":1}
            C< {"type":"message","chat_id":$g,"seq":3,"kind":"react"}
            B> {"type":"react","chat_id":$g,"client_msg_id":6,"target_seq":1,"emoji":"👍"}
            B< {"type":"error","code":4090,"client_msg_id":6}
            B> {"type":"react","chat_id":$g,"client_msg_id":5,"target_seq":1,"emoji":"👍"}
            B< {"type":"receipt","chat_id":$g,"kind":"sent","seq":3,"client_msg_id":5}
            C> {"type":"react","chat_id":$g,"client_msg_id":7,"target_seq":2,"emoji":"👍"}
            C< {"type":"error","code":4090,"client_msg_id":7}
            C> {"type":"unreact","chat_id":$g,"client_msg_id":8,"target_seq":1,"emoji":"👍"}
            C< {"type":"error","code":4090,"client_msg_id":8}
            B> {"type":"unreact","chat_id":$g,"client_msg_id":9,"target_seq":1,"emoji":"👍"}
            B< {"type":"receipt","chat_id":$g,"kind":"sent","seq":4,"client_msg_id":9}
            A< {"type":"message","chat_id":$g,"seq":4,"kind":"unreact","target_seq":1}
            C< {"type":"message","chat_id":$g,"seq":4,"kind":"unreact"}
            A> {"type":"delete","chat_id":$g,"client_msg_id":10,"target_seq":1}
            A< {"type":"receipt","chat_id":$g,"kind":"sent","seq":5,"client_msg_id":10}
            B< {"type":"message","chat_id":$g,"seq":5,"body":"","kind":"delete","target_seq":1}
            C< {"type":"message","chat_id":$g,"seq":5,"kind":"delete"}
            A> {"type":"edit","chat_id":$g,"client_msg_id":11,"target_seq":1,"body":"back?"}
            A< {"type":"error","code":4090,"client_msg_id":11}
            B> {"type":"react","chat_id":$g,"client_msg_id":12,"target_seq":1,"emoji":"👍"}
            B< {"type":"error","code":4090,"client_msg_id":12}
            A> {"type":"delete","chat_id":$g,"client_msg_id":13,"target_seq":9}
            A< {"type":"error","code":4090,"client_msg_id":13}
            D> {"type":"react","chat_id":$g,"client_msg_id":14,"target_seq":2,"emoji":"👍"}
            D< {"type":"error","code":4030,"client_msg_id":14}
            C> {"type":"sync","client_msg_id":15,"chat_id":$g,"after_seq":0,"limit":10}
            C< {"type":"sync_batch","client_msg_id":15,"chat_id":$g,"messages":[{"seq":1,"body":"see you at 10"},{"seq":2,"kind":"edit","target_seq":1,"body":"see you at 11"},{"seq":3,"kind":"react","sender":$B},{"seq":4,"kind":"unreact"},{"seq":5,"kind":"delete","target_seq":1}],"has_more":false}
            C> {"type":"sync","client_msg_id":16,"chat_id":$g,"after_seq":0,"before_seq":18446744073709551615,"limit":2}
            C< {"type":"sync_batch","client_msg_id":16,"chat_id":$g,"messages":[{"seq":5,"kind":"delete"},{"seq":4,"kind":"unreact"}],"has_more":true}
        "#,
    },
    Case {
        name: "a user holds at most MAX_REACTIONS_PER_USER reactions on one message (4004 for one more)",
        script: r#"
            A> {"type":"create_chat","client_msg_id":1,"kind":"public_group","title":"g","members":[]}
            A< {"type":"chat_created","client_msg_id":1,"chat_id":$g}
            A> {"type":"send","chat_id":$g,"client_msg_id":2,"body":"vote"}
            A< {"type":"receipt","chat_id":$g,"kind":"sent","seq":1}
            A> {"type":"react","chat_id":$g,"client_msg_id":3,"target_seq":1,"emoji":"a"}
            A< {"type":"receipt","chat_id":$g,"kind":"sent","seq":2}
            A> {"type":"react","chat_id":$g,"client_msg_id":4,"target_seq":1,"emoji":"b"}
            A< {"type":"receipt","chat_id":$g,"kind":"sent","seq":3}
            A> {"type":"react","chat_id":$g,"client_msg_id":5,"target_seq":1,"emoji":"c"}
            A< {"type":"receipt","chat_id":$g,"kind":"sent","seq":4}
            A> {"type":"react","chat_id":$g,"client_msg_id":6,"target_seq":1,"emoji":"d"}
            A< {"type":"receipt","chat_id":$g,"kind":"sent","seq":5}
            A> {"type":"react","chat_id":$g,"client_msg_id":7,"target_seq":1,"emoji":"e"}
            A< {"type":"receipt","chat_id":$g,"kind":"sent","seq":6}
            A> {"type":"react","chat_id":$g,"client_msg_id":8,"target_seq":1,"emoji":"f"}
            A< {"type":"receipt","chat_id":$g,"kind":"sent","seq":7}
            A> {"type":"react","chat_id":$g,"client_msg_id":9,"target_seq":1,"emoji":"g"}
            A< {"type":"receipt","chat_id":$g,"kind":"sent","seq":8}
            A> {"type":"react","chat_id":$g,"client_msg_id":10,"target_seq":1,"emoji":"h"}
            A< {"type":"receipt","chat_id":$g,"kind":"sent","seq":9}
            A> {"type":"react","chat_id":$g,"client_msg_id":11,"target_seq":1,"emoji":"i"}
            A< {"type":"error","code":4004,"client_msg_id":11}
            A> {"type":"unreact","chat_id":$g,"client_msg_id":12,"target_seq":1,"emoji":"a"}
            A< {"type":"receipt","chat_id":$g,"kind":"sent","seq":10}
            A> {"type":"react","chat_id":$g,"client_msg_id":13,"target_seq":1,"emoji":"i"}
            A< {"type":"receipt","chat_id":$g,"kind":"sent","seq":11}
        "#,
    },
];

type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Where the cases run, and how long to give the server.
struct Target {
    addr: SocketAddr,
    /// How long after connecting before the users are reachable (the amqp engine's
    /// registry is written by the gateway's bridge, a moment after the welcome).
    registry_wait: Duration,
    /// How long to wait, after a case, for frames it should not have produced.
    settle: Duration,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_engine_decides_every_case_as_the_protocol_says() {
    let config = gateway::Config::try_parse_from(
        [
            "gateway",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            // Two cores: chats, their creators and their members on different cores.
            "--cores",
            "2",
            "--jwt-secret",
            SECRET,
            "--frames-per-second",
            "100000",
            "--frame-burst",
            "100000",
            "--max-chats-per-user",
            MAX_CHATS_PER_USER,
        ]
        .into_iter()
        .chain(USER_BUDGET),
    )
    .expect("flags");
    let gateway = Gateway::start(config).expect("gateway starts");
    let target = Target {
        addr: gateway.local_addr(),
        registry_wait: Duration::ZERO,
        settle: Duration::from_millis(100),
    };
    let failures = run_all(&target).await;
    gateway.begin_shutdown();
    tokio::task::spawn_blocking(move || gateway.join())
        .await
        .expect("gateway stops");
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_amqp_engine_with_the_backend_decides_every_case_as_the_protocol_says() {
    let (name, node_id) = private_corner("conformance");
    let backend_config = backend::Config::try_parse_from([
        "backend",
        "--database-url",
        &database_url(),
        "--pg-schema",
        &name,
        "--amqp-prefix",
        &name,
        "--redis-prefix",
        &name,
        "--shards",
        SHARDS,
        "--max-chats-per-user",
        MAX_CHATS_PER_USER,
        "--name",
        &format!("{name}-worker"),
    ])
    .expect("flags");
    let shutdown = CancellationToken::new();
    let worker = tokio::spawn(backend::run(
        backend_config,
        shutdown.clone(),
        Default::default(),
    ));
    let gateway = full_stack::start_gateway_with(&name, node_id, AMQP_URL, &USER_BUDGET);
    let target = Target {
        addr: gateway.local_addr(),
        registry_wait: Duration::from_millis(200),
        settle: Duration::from_millis(300),
    };
    let failures = run_all(&target).await;
    shutdown.cancel();
    let stopped = worker.await.expect("the worker task");
    gateway.begin_shutdown();
    tokio::task::spawn_blocking(move || gateway.join())
        .await
        .expect("gateway stops");
    clean_up(&name, node_id, Some(AMQP_URL));
    stopped.expect("the worker ran");
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Runs every case, each with users of its own; returns the failures.
async fn run_all(target: &Target) -> Vec<String> {
    let mut failures = Vec::new();
    for (index, case) in CASES.iter().enumerate() {
        if let Err(failure) = run_case(target, index, case).await {
            failures.push(format!("case \"{}\": {failure}", case.name));
        }
    }
    failures
}

/// One line of a script.
enum Line<'s> {
    Send(&'s str, &'s str),
    Expect(&'s str, &'s str),
}

fn parse(script: &str) -> Result<Vec<Line<'_>>, String> {
    script
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .map(|line| {
            let at = line
                .find(['>', '<'])
                .ok_or_else(|| format!("no > or < in {line:?}"))?;
            let (who, rest) = line.split_at(at);
            let json = rest[1..].trim();
            if rest.starts_with('>') {
                Ok(Line::Send(who, json))
            } else {
                Ok(Line::Expect(who, json))
            }
        })
        .collect()
}

/// The user a connection label names: its letter.
fn user_var(label: &str) -> String {
    label.chars().take(1).collect()
}

async fn run_case(target: &Target, index: usize, case: &Case) -> Result<(), String> {
    let lines = parse(case.script)?;
    // Users of this case: $A is ...01, $B ...02, and so on, apart from every other case's.
    let base = 1_000 + 100 * index as u64;
    let mut vars: HashMap<String, u64> = ('A'..='H')
        .zip(1..)
        .map(|(letter, n)| (letter.to_string(), base + n))
        .collect();
    let labels: BTreeSet<&str> = lines
        .iter()
        .map(|line| match line {
            Line::Send(who, _) | Line::Expect(who, _) => *who,
        })
        .collect();
    let mut clients: HashMap<&str, Client> = HashMap::new();
    for &label in &labels {
        let user = *vars
            .get(&user_var(label))
            .ok_or_else(|| format!("no user for connection {label}"))?;
        clients.insert(label, connect(target.addr, user).await?);
    }
    tokio::time::sleep(target.registry_wait).await;
    for (number, line) in lines.iter().enumerate() {
        let at = |what: String| format!("line {}: {what}", number + 1);
        match *line {
            Line::Send(who, template) => {
                let json = substitute(template, &vars);
                // A frame this side's codec refuses goes out as the text it is, so that the
                // case checks the gateway's refusal of it.
                let message = match ClientFrame::from_json(&json) {
                    Ok(frame) => {
                        Message::Binary(Bytes::from(frame.encode().map_err(|e| at(e.to_string()))?))
                    }
                    Err(_) => Message::Text(json.into()),
                };
                let client = clients.get_mut(who).ok_or_else(|| at(who.into()))?;
                client
                    .send(message)
                    .await
                    .map_err(|error| at(format!("{who} could not send: {error}")))?;
            }
            Line::Expect(who, template) => {
                let pattern: Value = serde_json::from_str(&substitute(template, &vars))
                    .map_err(|error| at(format!("bad pattern {template}: {error}")))?;
                let client = clients.get_mut(who).ok_or_else(|| at(who.into()))?;
                let frame = recv(client, Duration::from_secs(10))
                    .await
                    .ok_or_else(|| at(format!("{who} received nothing; expected {pattern}")))?;
                let actual = serde_json::to_value(&frame).map_err(|e| at(e.to_string()))?;
                if !matches(&pattern, &actual, &mut vars) {
                    return Err(at(format!(
                        "{who} expected {pattern}\n  but received {actual}"
                    )));
                }
            }
        }
    }
    tokio::time::sleep(target.settle).await;
    for (who, client) in &mut clients {
        if let Some(frame) = recv(client, Duration::from_millis(20)).await {
            return Err(format!(
                "after the last line, {who} received {}",
                frame.to_json()
            ));
        }
    }
    Ok(())
}

async fn connect(addr: SocketAddr, user: u64) -> Result<Client, String> {
    // The amqp engine's gateway accepts only once it reaches the broker; retry until then.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match tokio_tungstenite::connect_async(upgrade_request(addr, user)).await {
            Ok((mut client, _)) => {
                return match recv(&mut client, Duration::from_secs(10)).await {
                    Some(ServerFrame::Welcome(_)) => Ok(client),
                    other => Err(format!("user {user} got {other:?} instead of a welcome")),
                };
            }
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(error) => return Err(format!("user {user} could not connect: {error}")),
        }
    }
}

/// The next server frame within `wait`, skipping WebSocket control frames; `None` if none
/// came or the connection ended.
async fn recv(client: &mut Client, wait: Duration) -> Option<ServerFrame> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let message = tokio::time::timeout_at(deadline, client.next())
            .await
            .ok()??
            .ok()?;
        match message {
            Message::Binary(bytes) => return ServerFrame::decode(&bytes).ok(),
            Message::Text(text) => return ServerFrame::from_json(text.as_str()).ok(),
            Message::Close(_) => return None,
            _ => continue,
        }
    }
}

/// Replaces every `$name` with its value; an unknown one becomes the string `"$name"`,
/// which a pattern binds.
fn substitute(template: &str, vars: &HashMap<String, u64>) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let name: String = rest[at + 1..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        match vars.get(&name) {
            Some(value) => out.push_str(&value.to_string()),
            None => out.push_str(&format!("\"${name}\"")),
        }
        rest = &rest[at + 1 + name.len()..];
    }
    out.push_str(rest);
    out
}

/// Whether `actual` has what `pattern` asks for, binding the pattern's unknowns.
fn matches(pattern: &Value, actual: &Value, vars: &mut HashMap<String, u64>) -> bool {
    match pattern {
        Value::String(s) if s == "_" => true,
        Value::String(s) if s.starts_with('$') => match actual.as_u64() {
            Some(value) => {
                vars.insert(s[1..].to_owned(), value);
                true
            }
            None => false,
        },
        Value::Object(fields) => actual.as_object().is_some_and(|actual| {
            fields
                .iter()
                .all(|(key, want)| actual.get(key).is_some_and(|got| matches(want, got, vars)))
        }),
        Value::Array(items) => actual.as_array().is_some_and(|actual| {
            actual.len() == items.len()
                && items
                    .iter()
                    .zip(actual)
                    .all(|(want, got)| matches(want, got, vars))
        }),
        other => other == actual,
    }
}
