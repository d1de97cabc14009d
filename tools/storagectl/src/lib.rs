//! `storagectl`: talks to any storage backend the way the Capact Hub does,
//! for operators, and prints what registers a backend in the Hub.
//!
//! One command works against both services: the kind is learned from
//! `BackendInfo/Describe`. Values are written to stdout only when asked for
//! (`get`, `pre-create-value`) and never appear in an error.

pub mod admin;
pub mod connect;
pub mod error;
pub mod hub;
pub mod registration;
pub mod yaml;

use std::{
    io::{IsTerminal, Read, Write},
    path::{Path, PathBuf},
    process::ExitCode,
};

use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use serde_json::{Value as Json, json};
use shared::{client::Client, proto::info::DescribeResponse};

pub use connect::ConnectArgs;
pub use error::Error;

/// Hub-like client for Capact storage backends.
#[derive(Parser, Debug)]
#[command(name = "storagectl", version)]
pub struct Cli {
    #[command(flatten)]
    pub connect: ConnectArgs,

    #[command(subcommand)]
    pub command: Command,
}

/// The context sent with a call, as JSON text (validated as JSON here; the
/// backend checks it against its schema).
#[derive(Args, Debug, Clone, Default)]
pub struct ContextArg {
    /// Context of the TypeInstance, as JSON (e.g. '{"mount":"secret"}').
    #[arg(long, value_parser = parse_context)]
    pub context: Option<Bytes>,
}

/// Lock holder to act as, for calls that a lock guards.
#[derive(Args, Debug, Clone, Default)]
pub struct OwnerArg {
    /// Owner id: needed while the TypeInstance is locked (must be the holder).
    #[arg(long, env = "STORAGECTL_OWNER")]
    pub owner: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Print what the backend is (BackendInfo/Describe) as JSON.
    Describe,
    /// Write the value of one revision to stdout, byte for byte.
    Get {
        /// TypeInstance id.
        id: String,
        #[arg(long)]
        revision: u32,
        #[command(flatten)]
        context: ContextArg,
    },
    /// Create a TypeInstance (revision 1); prints the context the backend returns, if any.
    Create {
        /// TypeInstance id.
        id: String,
        /// File holding the value, `-` for stdin (the default for value
        /// backends); context backends take no value.
        #[arg(long)]
        value_file: Option<PathBuf>,
        #[command(flatten)]
        context: ContextArg,
    },
    /// Store a new revision; prints the context the backend returns, if any.
    Update {
        /// TypeInstance id.
        id: String,
        /// The new revision (the Hub sends latest + 1).
        #[arg(long)]
        revision: u32,
        /// File holding the value, `-` for stdin (the default for value
        /// backends); context backends take no value.
        #[arg(long)]
        value_file: Option<PathBuf>,
        #[command(flatten)]
        context: ContextArg,
        #[command(flatten)]
        owner: OwnerArg,
    },
    /// Delete a TypeInstance with every revision and its lock.
    Delete {
        /// TypeInstance id.
        id: String,
        #[command(flatten)]
        context: ContextArg,
        #[command(flatten)]
        owner: OwnerArg,
    },
    /// Delete one revision (the last one takes the TypeInstance with it).
    DeleteRevision {
        /// TypeInstance id.
        id: String,
        #[arg(long)]
        revision: u32,
        /// Context (value backends only: a context backend's request has none).
        #[command(flatten)]
        context: ContextArg,
        #[command(flatten)]
        owner: OwnerArg,
    },
    /// Lock a TypeInstance for an owner.
    Lock {
        /// TypeInstance id.
        id: String,
        /// Who holds the lock.
        #[arg(long, env = "STORAGECTL_OWNER")]
        owner: String,
        #[command(flatten)]
        context: ContextArg,
    },
    /// Unlock a TypeInstance, whoever holds it (the wire carries no owner).
    Unlock {
        /// TypeInstance id.
        id: String,
        #[command(flatten)]
        context: ContextArg,
    },
    /// Print the lock holder; prints nothing while unlocked.
    LockedBy {
        /// TypeInstance id.
        id: String,
        #[command(flatten)]
        context: ContextArg,
    },
    /// Write the value a context backend derives from a context to stdout
    /// (nothing when it offers none).
    PreCreateValue {
        /// Context to derive the value from, as JSON.
        #[arg(long, value_parser = parse_context)]
        context: Bytes,
    },
    /// Check the backend's gRPC health (grpc.health.v1): prints the status
    /// and exits 0 only when SERVING (a container HEALTHCHECK).
    Health {
        /// Service to ask about; empty means the whole server.
        #[arg(long, default_value = "")]
        service: String,
    },
    /// List the locked TypeInstances with holder and lock time (the admin
    /// service: --url is the backend's APP_ADMIN_ADDR).
    Locks {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Clear a lock only while EXPECTED_OWNER still holds it, for the day the
    /// Hub lost its own state (the admin service: --url is APP_ADMIN_ADDR).
    ForceUnlock {
        /// TypeInstance id.
        id: String,
        /// The holder you saw in `locks`; anyone else holding it: nothing changes.
        #[arg(long)]
        expected_owner: String,
    },
    /// Register this backend in the Hub: with --hub-endpoint, find or create
    /// its storage TypeInstance there and print its id; without, print the
    /// YAML that registers it (the TypeInstance and its OCF Type).
    Register {
        /// Address the Hub dials: host:port (plaintext) or https://host:port.
        #[arg(long, env = "STORAGECTL_HUB_URL")]
        hub_url: String,
        /// Full path of the Type [default: cap.type.capactio.storage-backends.<name>.storage].
        #[arg(long)]
        type_path: Option<String>,
        /// Backend name used in the default path and the Type's display name
        /// [default: the name the backend reports].
        #[arg(long)]
        name: Option<String>,
        /// Write `type-instance.yaml` and `type.yaml` into this directory
        /// instead of printing both documents.
        #[arg(long, conflicts_with = "hub_endpoint")]
        output_dir: Option<std::path::PathBuf>,
        /// Update this registration (a TypeInstance id) instead of looking it up.
        #[arg(long, requires = "hub_endpoint")]
        id: Option<String>,
        #[command(flatten)]
        hub: hub::HubArgs,
    },
    /// Remove a backend's storage TypeInstance from the Hub. The Hub refuses
    /// while TypeInstances are stored in it. Needs no running backend.
    Unregister {
        /// Backend name the registration was made with (see `register --name`).
        #[arg(long, required_unless_present = "id")]
        name: Option<String>,
        /// Full path of the Type [default: cap.type.capactio.storage-backends.<name>.storage].
        #[arg(long, required_unless_present = "name")]
        type_path: Option<String>,
        /// The registration's TypeInstance id, when the name does not find it.
        #[arg(long, requires = "type_path")]
        id: Option<String>,
        /// Also match a registration (made by hand) by the URL it holds.
        #[arg(long)]
        hub_url: Option<String>,
        #[command(flatten)]
        hub: hub::HubArgs,
    },
}

/// Checks that a context is JSON; the bytes are sent as given.
fn parse_context(raw: &str) -> Result<Bytes, String> {
    serde_json::from_str::<Json>(raw).map_err(|e| format!("not JSON: {e}"))?;
    Ok(Bytes::copy_from_slice(raw.as_bytes()))
}

/// Parses the command line, runs it and turns the outcome into an exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// Runs one parsed command.
pub async fn run(cli: Cli) -> Result<(), Error> {
    // Usage errors first: no need to reach the backend to report them.
    if let Command::Register {
        hub_url, type_path, ..
    } = &cli.command
    {
        registration::check_hub_url(hub_url)?;
        if let Some(path) = type_path {
            registration::split_type_path(path)?;
        }
    }
    if let Command::Health { service } = &cli.command {
        return health(&cli.connect, service).await;
    }
    if let Command::Locks { json } = &cli.command {
        return admin::locks(&cli.connect, *json).await;
    }
    if let Command::ForceUnlock { id, expected_owner } = &cli.command {
        return admin::force_unlock(&cli.connect, id, expected_owner).await;
    }
    if let Command::Unregister {
        name,
        type_path,
        id,
        hub_url,
        hub,
    } = &cli.command
    {
        return unregister(cli.connect.timeout, name, type_path, id, hub_url, hub).await;
    }
    let client = cli.connect.connect().await?;
    match cli.command {
        Command::Health { .. } => Ok(()),
        Command::Describe => {
            let mut text = yaml::pretty_json(&describe_json(client.info()));
            text.push('\n');
            write_stdout(text.as_bytes())
        }
        Command::Get {
            id,
            revision,
            context,
        } => {
            // An unset value fails, as it does in the Hub.
            let value = client
                .get(&id, revision, context.context)
                .await?
                .ok_or_else(|| {
                    Error::other(format!(
                        "the {} backend answered GetValue without a value",
                        client.info().name
                    ))
                })?;
            write_stdout(&value)
        }
        Command::Create {
            id,
            value_file,
            context,
        } => {
            let value = read_value(&client, value_file.as_deref())?;
            let returned = client.create(&id, value, context.context).await?;
            print_context(returned)
        }
        Command::Update {
            id,
            revision,
            value_file,
            context,
            owner,
        } => {
            let value = read_value(&client, value_file.as_deref())?;
            let returned = client
                .update(&id, revision, value, context.context, owner.owner)
                .await?;
            print_context(returned)
        }
        Command::Delete { id, context, owner } => {
            Ok(client.delete(&id, context.context, owner.owner).await?)
        }
        Command::DeleteRevision {
            id,
            revision,
            context,
            owner,
        } => {
            // The context service's request has no context field: a context
            // given for a context backend is refused, not dropped.
            if !client.accept_value() && context.context.is_some() {
                return Err(Error::usage(
                    "OnDeleteRevision of a context backend carries no context: omit --context",
                ));
            }
            Ok(client
                .delete_revision(&id, revision, context.context, owner.owner)
                .await?)
        }
        Command::Lock { id, owner, context } => {
            Ok(client.lock(&id, &owner, context.context).await?)
        }
        Command::Unlock { id, context } => Ok(client.unlock(&id, context.context).await?),
        Command::LockedBy { id, context } => match client.locked_by(&id, context.context).await? {
            Some(owner) => write_stdout(format!("{owner}\n").as_bytes()),
            None => Ok(()),
        },
        Command::PreCreateValue { context } => {
            if client.accept_value() {
                return Err(Error::usage(client.context_only("pre-create-value")));
            }
            match client.pre_create_value(Some(context)).await? {
                Some(value) => write_stdout(&value),
                None => Ok(()),
            }
        }
        Command::Unregister { .. } | Command::Locks { .. } | Command::ForceUnlock { .. } => Ok(()),
        Command::Register {
            hub_url,
            type_path,
            name,
            output_dir,
            id,
            hub,
        } => {
            let mut info = client.info().clone();
            if let Some(name) = name {
                info.name = name;
            }
            let path = type_path.unwrap_or_else(|| registration::default_type_path(&info.name));
            let rendered = registration::render_parts(&info, &hub_url, &path)?;
            let Some(hub) = hub.hub(cli.connect.timeout)? else {
                return match output_dir {
                    Some(dir) => rendered.write_to(&dir),
                    None => write_stdout(rendered.stream().as_bytes()),
                };
            };
            let value = registration::type_instance_value(&info, &hub_url)?;
            let target = hub::Target {
                type_path: &path,
                name: &info.name,
                id: id.as_deref(),
                url: Some(&hub_url),
            };
            let (id, what) = match hub::register(&hub, &target, &value).await? {
                hub::Registered::Created(id) => (id, "created".to_owned()),
                hub::Registered::Updated(id, rev) => (id, format!("updated to revision {rev}")),
                hub::Registered::Unchanged(id) => (id, "already registered".to_owned()),
            };
            eprintln!("{} backend: {what} in the hub as {id}", info.name);
            write_stdout(format!("{id}\n").as_bytes())
        }
    }
}

/// `unregister`: acts on the Hub only, so it works after the backend is gone.
async fn unregister(
    timeout: std::time::Duration,
    name: &Option<String>,
    type_path: &Option<String>,
    id: &Option<String>,
    hub_url: &Option<String>,
    hub: &hub::HubArgs,
) -> Result<(), Error> {
    let hub = hub
        .hub(timeout)?
        .ok_or_else(|| Error::usage("unregister needs --hub-endpoint"))?;
    let name = name.as_deref().unwrap_or_default();
    let path = match type_path {
        Some(p) => p.clone(),
        None => registration::default_type_path(name),
    };
    registration::split_type_path(&path)?;
    let target = hub::Target {
        type_path: &path,
        name,
        id: id.as_deref(),
        url: hub_url.as_deref(),
    };
    match hub::unregister(&hub, &target).await? {
        Some(id) => {
            eprintln!("unregistered {id} from the hub");
            write_stdout(format!("{id}\n").as_bytes())
        }
        None => {
            eprintln!("nothing to unregister: the hub has no registration of type {path}");
            Ok(())
        }
    }
}

/// One grpc.health.v1 Check; no Describe first, so it also works on a
/// backend whose store is down (it then reports NOT_SERVING).
async fn health(args: &connect::ConnectArgs, service: &str) -> Result<(), Error> {
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};
    let channel = args.settings().channel_with(args.timeouts()).await?;
    let answer = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .map_err(Error::from)?
        .into_inner();
    let status = ServingStatus::try_from(answer.status).unwrap_or(ServingStatus::Unknown);
    write_stdout(format!("{}\n", status.as_str_name()).as_bytes())?;
    if status == ServingStatus::Serving {
        Ok(())
    } else {
        Err(Error::other(format!(
            "the backend is {}",
            status.as_str_name()
        )))
    }
}

/// Describe as JSON, with the context schema embedded as JSON (kept as text
/// if the backend sent something unparsable, so it can still be seen).
pub fn describe_json(info: &DescribeResponse) -> Json {
    let schema = if info.context_schema.trim().is_empty() {
        Json::Null
    } else {
        serde_json::from_str(&info.context_schema)
            .unwrap_or_else(|_| Json::String(info.context_schema.clone()))
    };
    let service = if info.accept_value {
        shared::proto::VALUE_SERVICE
    } else {
        shared::proto::CONTEXT_SERVICE
    };
    json!({
        "name": info.name,
        "version": info.version,
        "acceptValue": info.accept_value,
        "service": service,
        "contextSchema": schema,
        "contextRequired": info.context_required,
        "maxValueBytes": info.max_value_bytes,
    })
}

/// The value for create/update: none for context backends, else the file
/// or stdin.
fn read_value(client: &Client, file: Option<&Path>) -> Result<Option<Bytes>, Error> {
    if !client.accept_value() {
        return match file {
            Some(_) => Err(Error::usage(client.value_refused("omit --value-file"))),
            None => Ok(None),
        };
    }
    let value = match file {
        Some(path) if path != Path::new("-") => std::fs::read(path)
            .map_err(|e| Error::other(format!("cannot read {}: {e}", path.display())))?,
        _ => {
            let mut stdin = std::io::stdin();
            // Waiting on a terminal looks like a hang: say what is expected.
            if file.is_none() && stdin.is_terminal() {
                return Err(Error::usage(
                    "no value: give --value-file FILE or pipe the value on stdin",
                ));
            }
            let mut buf = Vec::new();
            stdin
                .read_to_end(&mut buf)
                .map_err(|e| Error::other(format!("cannot read the value from stdin: {e}")))?;
            buf
        }
    };
    // Refused here, before sending: the backend would refuse it too, after
    // the whole value crossed the network.
    client.check_size(&value).map_err(Error::usage)?;
    Ok(Some(Bytes::from(value)))
}

/// Prints the context the backend returned; an empty one is none.
fn print_context(context: Option<Bytes>) -> Result<(), Error> {
    match context.filter(|c| !c.is_empty()) {
        Some(context) => {
            let mut line = context.to_vec();
            line.push(b'\n');
            write_stdout(&line)
        }
        None => Ok(()),
    }
}

fn write_stdout(bytes: &[u8]) -> Result<(), Error> {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)
        .and_then(|()| out.flush())
        .map_err(|e| Error::other(format!("cannot write to stdout: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_go_anywhere() {
        let cli = Cli::try_parse_from([
            "storagectl",
            "get",
            "ti-1",
            "--revision",
            "2",
            "--url",
            "b:1",
            "--timeout",
            "2s",
        ])
        .expect("parses");
        assert_eq!(cli.connect.url, "b:1");
        assert_eq!(cli.connect.timeout, std::time::Duration::from_secs(2));
        assert!(matches!(cli.command, Command::Get { revision: 2, .. }));
    }

    #[test]
    fn context_must_be_json() {
        let bad = Cli::try_parse_from(["storagectl", "unlock", "x", "--context", "{nope"]);
        assert_eq!(
            bad.err().map(|e| e.exit_code()),
            Some(2),
            "usage errors exit with 2"
        );
        let good = Cli::try_parse_from(["storagectl", "unlock", "x", "--context", r#"{"a":1}"#])
            .expect("parses");
        match good.command {
            Command::Unlock { context, .. } => {
                assert_eq!(context.context.as_deref(), Some(&br#"{"a":1}"#[..]));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn tls_cert_needs_a_key() {
        assert!(Cli::try_parse_from(["storagectl", "describe", "--tls-cert", "c.pem"]).is_err());
    }

    #[test]
    fn describe_embeds_the_schema() {
        let info = DescribeResponse {
            name: "x".into(),
            version: "1".into(),
            accept_value: false,
            context_schema: r#"{"type":"object"}"#.into(),
            max_value_bytes: 10,
            context_required: true,
        };
        let out = describe_json(&info);
        assert_eq!(out["contextSchema"], json!({"type": "object"}));
        assert_eq!(out["service"], "storage_backend.ContextStorageBackend");
    }
}
