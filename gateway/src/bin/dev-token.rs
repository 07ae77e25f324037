//! `dev-token`: prints a signed token for local use, e.g.
//! `JWT_SECRET=… cargo run -p gateway --bin dev-token -- --sub alice --role CLIENT`.

use clap::{Parser, ValueEnum};
use jwt_auth::{Role, issue_for, jwt_secret_from_env};
use service_kit::config::{AppEnv, ExposeSecret};

#[derive(Clone, Copy, ValueEnum)]
#[value(rename_all = "SCREAMING_SNAKE_CASE")]
enum RoleArg {
    Admin,
    Seller,
    Client,
}

#[derive(Parser)]
#[command(
    about = "Print a JWT (HS256, signed with JWT_SECRET; the dev secret only under APP_ENV=development)"
)]
struct Cli {
    /// The subject: the customer id of a CLIENT.
    #[arg(long)]
    sub: String,
    #[arg(long, value_enum)]
    role: RoleArg,
    /// Required for a SELLER: the seller its products belong to.
    #[arg(long)]
    seller_id: Option<String>,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    ttl: u64,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let role = match cli.role {
        RoleArg::Admin => Role::Admin,
        RoleArg::Seller => Role::Seller,
        RoleArg::Client => Role::Client,
    };
    if role == Role::Seller && cli.seller_id.is_none() {
        anyhow::bail!("a SELLER token needs --seller-id");
    }
    let secret = jwt_secret_from_env(AppEnv::from_env()?)?;
    let lifetime = std::time::Duration::from_secs(cli.ttl);
    println!(
        "{}",
        issue_for(
            secret.expose_secret().as_bytes(),
            &cli.sub,
            role,
            cli.seller_id.as_deref(),
            lifetime
        )?
    );
    Ok(())
}
