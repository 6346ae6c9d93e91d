//! String example, interoperable with eCAL's `std::string` samples (e.g. eCAL's hello world):
//! `hello pub [--text T]` sends "T #n" once per second, `hello sub` prints what arrives.

use clap::{Parser, Subcommand};
use examples::{init_logging, stop_on_ctrl_c, stopping, CommonArgs};
use middleware::Text;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(about = "Send or print std::string messages")]
struct Args {
    #[command(subcommand)]
    role: Role,
    /// Topic name.
    #[arg(long, default_value = "hello", global = true)]
    topic: String,
    /// Messages to send or wait for (0 = forever).
    #[arg(long, default_value_t = 0, global = true)]
    count: u64,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Subcommand, Debug)]
enum Role {
    Pub {
        #[arg(long, default_value = "hello world")]
        text: String,
        /// Messages per second.
        #[arg(long, default_value_t = 1.0)]
        rate: f64,
    },
    Sub,
}

fn main() -> anyhow::Result<()> {
    init_logging();
    stop_on_ctrl_c();
    let args = Args::parse();
    let node = middleware::open_node(args.common.load()?)?;
    match args.role {
        Role::Pub { text, rate } => {
            let p = node.publisher::<Text>(&args.topic)?;
            let mut n = 0u64;
            while (args.count == 0 || n < args.count) && !stopping() {
                let msg = format!("{text} #{n}");
                let sent = p.send(&msg)?;
                eprintln!("{} {msg}", if sent { "sent" } else { "no subscriber, not sent:" });
                n += 1;
                std::thread::sleep(Duration::from_secs_f64(1.0 / rate.max(0.001)));
            }
        }
        Role::Sub => {
            let s = node.subscriber::<Text>(&args.topic)?;
            let mut n = 0u64;
            while (args.count == 0 || n < args.count) && !stopping() {
                if let Some(r) = s.recv_timeout(Duration::from_millis(200)) {
                    println!("{} (publisher {}, clock {})", r.value, r.publisher_id, r.clock);
                    n += 1;
                }
            }
        }
    }
    Ok(())
}
