//! Typed protobuf example: `people pub` sends `pb.People.Person` records (with their descriptor
//! in registration, so eCAL tools can decode them), `people sub` prints them.

use clap::{Parser, Subcommand};
use examples::people::Person;
use examples::{init_logging, CommonArgs};
use middleware::Proto;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(about = "Publish or subscribe pb.People.Person records")]
struct Args {
    #[command(subcommand)]
    role: Role,
    /// Topic name.
    #[arg(long, default_value = "person", global = true)]
    topic: String,
    /// Number of records.
    #[arg(long, default_value_t = 5, global = true)]
    count: u32,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Subcommand, Debug)]
enum Role {
    /// Publish records once a subscriber is connected.
    Pub,
    /// Print records as JSON lines; exit 1 if fewer than --count arrive within 30 s.
    Sub,
}

fn main() -> anyhow::Result<()> {
    init_logging();
    let args = Args::parse();
    let node = middleware::open_node(args.common.load()?)?;
    match args.role {
        Role::Pub => {
            let p = node.publisher::<Proto<Person>>(&args.topic)?;
            anyhow::ensure!(p.wait_for_subscriber(Duration::from_secs(20)), "no subscriber within 20 s");
            for id in 0..args.count as i32 {
                let person = Person { id, name: format!("person {id}"), email: format!("p{id}@example.org") };
                p.send(&person)?;
                std::thread::sleep(Duration::from_millis(100));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        Role::Sub => {
            let s = node.subscriber::<Proto<Person>>(&args.topic)?;
            let end = std::time::Instant::now() + Duration::from_secs(30);
            let mut got = 0;
            while got < args.count && std::time::Instant::now() < end {
                if let Some(r) = s.recv_timeout(Duration::from_millis(100)) {
                    let p = r.value;
                    println!("{}", serde_json::json!({"id": p.id, "name": p.name, "email": p.email, "clock": r.clock}));
                    got += 1;
                }
            }
            anyhow::ensure!(got == args.count, "received {got} of {} records", args.count);
        }
    }
    Ok(())
}
