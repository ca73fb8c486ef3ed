//! `realtime-stack chat`: the common operator's errands on the stack's chat, through its
//! server API (app/README.md, Server API), so that no one needs curl: post a message,
//! page through a room's history, delete a message, disconnect or ban a user.
//!
//! It talks to the stack's one URL: `https://<domain>/` from `stack.yaml`, or with
//! `--local` the local load balancer of `up --local`, and authenticates with an API
//! token from `--token` (or `REALTIME_STACK_API_TOKEN`), or with `--local` one it mints
//! with the development key. It calls nothing on AWS.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use aws_smithy_types::DateTime;
use aws_smithy_types::date_time::Format;
use reqwest::{Method, StatusCode, Url};
use serde_json::{Value, json};

use super::{OutputFormat, signing};
use crate::identity::{Claims, parse_ttl};
use crate::local::{StateDir, repository};
use crate::spec::StackSpec;

/// Who the tokens `--local` mints name as the caller.
const LOCAL_CALLER: &str = "realtime-stack";
/// How long they are valid: this command's one request.
const LOCAL_TOKEN_TTL: Duration = Duration::from_secs(300);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(clap::Args, Debug, Clone)]
pub struct ChatArgs {
    #[command(subcommand)]
    pub command: ChatCommand,
    /// The stack of `up --local`: its local load balancer, with a token minted with
    /// the development key
    #[arg(long, global = true)]
    pub local: bool,
    /// A server API token: a JWT with `"scope": "api"` from your identity service
    /// (`realtime-stack token --api` mints a development one)
    #[arg(
        long,
        env = "REALTIME_STACK_API_TOKEN",
        hide_env_values = true,
        global = true
    )]
    pub token: Option<String>,
    /// The chat's URL [default: https://<domain>/ of stack.yaml; with --local, the local
    /// load balancer's]
    #[arg(long, global = true)]
    pub url: Option<Url>,
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum ChatCommand {
    /// Post a message to a room, as the server API does (marked as from the API);
    /// prints its id
    Post {
        room: String,
        text: String,
        /// The name shown as its author
        #[arg(long, default_value = "realtime-stack")]
        name: String,
        /// An id for this message: posting again with the same one within 300 s
        /// stores it once
        #[arg(long)]
        cid: Option<String>,
    },
    /// Show a page of a room's history, newest first
    History {
        room: String,
        /// Messages before this id (a message's, or the `--before` the previous page
        /// printed)
        #[arg(long)]
        before: Option<String>,
        /// Messages in the page, 1 to 200
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// How to print the page: lines, or the API's JSON answer
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        output: OutputFormat,
    },
    /// Delete a message: every client shows it as removed
    Delete { room: String, id: String },
    /// Disconnect a user (their `sub`) on every instance; with --ban, refuse them for
    /// that long
    Kick {
        sub: String,
        /// How long the user is refused: 90s, 10m, 1h, 7d
        #[arg(long, value_parser = parse_ttl)]
        ban: Option<Duration>,
        /// Shown to the user (at most 80 characters)
        #[arg(long)]
        reason: Option<String>,
    },
    /// Lift a user's ban
    Unban { sub: String },
}

pub async fn run(file: &Path, args: &ChatArgs) -> Result<()> {
    let spec = StackSpec::load(file)?;
    let api = Api::for_stack(file, &spec, args)?;
    match &args.command {
        ChatCommand::Post {
            room,
            text,
            name,
            cid,
        } => {
            let mut body = json!({"name": name, "text": text});
            if let Some(cid) = cid {
                body["cid"] = json!(cid);
            }
            let posted = api
                .call(Method::POST, &["rooms", room, "messages"], &[], Some(body))
                .await?;
            if posted["duplicate"] == true {
                eprintln!("posted before with this --cid: nothing new was posted");
            }
            println!("{}", text_of(&posted["id"]));
        }
        ChatCommand::History {
            room,
            before,
            limit,
            output,
        } => {
            let mut query = vec![("limit", limit.to_string())];
            if let Some(before) = before {
                query.push(("before", before.clone()));
            }
            let page = api
                .call(Method::GET, &["rooms", room, "messages"], &query, None)
                .await?;
            match output {
                OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&page)?),
                OutputFormat::Text => print_page(room, &page),
            }
        }
        ChatCommand::Delete { room, id } => {
            api.call(Method::DELETE, &["rooms", room, "messages", id], &[], None)
                .await?;
            println!("deleted {id} in #{room}: every client shows it as removed");
        }
        ChatCommand::Kick { sub, ban, reason } => {
            let mut body = json!({});
            if let Some(ban) = ban {
                body["ban_seconds"] = json!(ban.as_secs());
            }
            if let Some(reason) = reason {
                body["reason"] = json!(reason);
            }
            let answer = api
                .call(Method::POST, &["users", sub, "disconnect"], &[], Some(body))
                .await?;
            match answer["banned_until_ms"].as_i64() {
                Some(until) => println!(
                    "disconnected {sub} on every instance, banned until {}",
                    DateTime::from_millis(until).fmt(Format::DateTime)?
                ),
                None => println!("disconnected {sub} on every instance"),
            }
        }
        ChatCommand::Unban { sub } => {
            api.call(Method::DELETE, &["users", sub, "ban"], &[], None)
                .await?;
            println!("{sub} is not banned any more");
        }
    }
    Ok(())
}

/// The stack's chat API: where, and with which token.
struct Api {
    base: Url,
    token: String,
    http: reqwest::Client,
}

impl Api {
    fn for_stack(file: &Path, spec: &StackSpec, args: &ChatArgs) -> Result<Api> {
        let base = match (&args.url, args.local) {
            (Some(url), _) => url.clone(),
            (None, true) => {
                let state = StateDir::of(repository(), &spec.name).load()?;
                let Some(port) = state.load_balancer_port else {
                    bail!(
                        "no local stack {} runs on this machine: `realtime-stack up --local` \
                         starts it",
                        spec.name
                    );
                };
                Url::parse(&format!("http://127.0.0.1:{port}/"))?
            }
            (None, false) => Url::parse(&format!("https://{}/", spec.domain.name))
                .with_context(|| format!("the domain {} as a URL", spec.domain.name))?,
        };
        let token = match (&args.token, args.local) {
            (Some(token), _) => token.trim().to_owned(),
            (None, true) => signing::mint(
                file,
                spec,
                None,
                Claims::api(LOCAL_CALLER, LOCAL_TOKEN_TTL)?,
            )
            .context("minting a server API token for the local stack (or pass --token)")?,
            (None, false) => bail!(
                "the chat's server API needs a token: pass --token or set \
                 REALTIME_STACK_API_TOKEN to a JWT with \"scope\": \"api\" from your identity \
                 service (`realtime-stack token --api --key <its private key>` mints one)"
            ),
        };
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .context("creating the HTTP client")?;
        Ok(Api { base, token, http })
    }

    /// `method` on `/api/v1/<path segments>?<query>`: the JSON answer (`Null` when it
    /// has none), or an error that says what the API said.
    async fn call(
        &self,
        method: Method,
        path: &[&str],
        query: &[(&str, String)],
        body: Option<Value>,
    ) -> Result<Value> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|()| anyhow::anyhow!("{} cannot be a base URL", self.base))?
            .pop_if_empty()
            .extend(["api", "v1"])
            .extend(path);
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        let mut request = self
            .http
            .request(method.clone(), url.clone())
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.with_context(|| {
            format!(
                "{method} {url}: the chat does not answer (is the stack up? `realtime-stack \
                 status` shows it)"
            )
        })?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .with_context(|| format!("{method} {url}: reading the answer"))?;
        let answer: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).with_context(|| {
                format!(
                    "{method} {url} answered {status} with something that is not the chat's \
                     API: {}",
                    String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
                )
            })?
        };
        if status.is_success() {
            return Ok(answer);
        }
        let code = text_of(&answer["code"]);
        let message = text_of(&answer["message"]);
        let hint = match (status, code.as_str()) {
            (StatusCode::UNAUTHORIZED, _) => {
                "; the token is missing, expired or not signed with the stack's key"
            }
            (StatusCode::FORBIDDEN, _) => {
                "; a user's sign-in token is not an API token: mint one with `token --api`"
            }
            (StatusCode::NOT_FOUND, "api_disabled") => {
                "; the stack's chat has no chat.auth in stack.yaml, so no server API"
            }
            _ => "",
        };
        bail!("{method} {url} answered {status}: {code}: {message}{hint}")
    }
}

/// A page of history as lines, newest first: id, time, name and text (a deleted
/// message as removed), then how to get the next page.
fn print_page(room: &str, page: &Value) {
    let messages = page["messages"].as_array().cloned().unwrap_or_default();
    if messages.is_empty() {
        println!("#{room}: no messages");
    }
    for message in &messages {
        let id = text_of(&message["id"]);
        if message["type"] == "deleted" {
            println!("{id}  (removed)");
            continue;
        }
        let time = message["ts"]
            .as_i64()
            .and_then(|ms| DateTime::from_millis(ms).fmt(Format::DateTime).ok())
            .unwrap_or_default();
        let via = if message["from"] == "api" {
            " [API]"
        } else {
            ""
        };
        println!(
            "{id}  {time}  {}{via}: {}",
            text_of(&message["name"]),
            text_of(&message["text"])
        );
    }
    if let Some(cursor) = page["cursor"].as_str() {
        eprintln!("older messages: --before {cursor}");
    }
}

fn text_of(value: &Value) -> String {
    value.as_str().unwrap_or_default().to_owned()
}
