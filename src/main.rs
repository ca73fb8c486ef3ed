//! The `realtime-stack` command line: parses arguments and hands over to a command.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use realtime_stack::aws::AwsArgs;
use realtime_stack::commands::{chat, destroy, drill, logs, plan, policy, status, token, up};
use realtime_stack::local::emulator;
use realtime_stack::spec::SpecError;

/// Provision a scalable realtime chat service on AWS from one stack.yaml, and remove it.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// The stack description
    #[arg(
        short = 'f',
        long = "file",
        global = true,
        default_value = "stack.yaml"
    )]
    file: PathBuf,
    #[command(flatten)]
    aws: AwsArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create the stack, or bring it back in line with stack.yaml
    Up(up::UpArgs),
    /// Show what `up` would change, without changing anything (exit code 2 when it would)
    Plan(plan::PlanArgs),
    /// Show every resource of the stack, how healthy each instance is and what it runs
    Status(status::StatusArgs),
    /// Show the instances' console output (the boot service's lines among it)
    Logs(logs::LogsArgs),
    /// Print the least-privilege IAM policy a deployer of this stack needs
    Policy(policy::PolicyArgs),
    /// Delete everything the stack owns
    Destroy(destroy::DestroyArgs),
    /// Print a development sign-in token for the stack's chat (chat.auth), or with --api
    /// one for its server API
    Token(token::TokenArgs),
    /// Use the chat's server API: post, read history, delete a message, kick or ban a user
    Chat(chat::ChatArgs),
    /// Prove resilience on the live stack: terminate an instance, or fail Redis over,
    /// while a client keeps chatting, and report what it saw
    Drill(drill::DrillArgs),
    /// Runs the local emulator of a stack (started by `up --local`)
    #[command(name = "local-emulator", hide = true)]
    LocalEmulator(emulator::EmulatorArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let done = |result: anyhow::Result<()>| result.map(|()| ExitCode::SUCCESS);
    let result = runtime.block_on(async {
        match &cli.command {
            Command::Up(args) => done(up::run(&cli.file, &cli.aws, args).await),
            Command::Plan(args) => plan::run(&cli.file, &cli.aws, args)
                .await
                .map(|pending| ExitCode::from(if pending { 2 } else { 0 })),
            Command::Status(args) => done(status::run(&cli.file, &cli.aws, args).await),
            Command::Logs(args) => done(logs::run(&cli.file, &cli.aws, args).await),
            Command::Policy(args) => done(policy::run(&cli.file, &cli.aws, args).await),
            Command::Destroy(args) => done(destroy::run(&cli.file, &cli.aws, args).await),
            Command::Token(args) => done(token::run(&cli.file, args)),
            Command::Chat(args) => done(chat::run(&cli.file, args).await),
            Command::Drill(args) => done(drill::run(&cli.file, &cli.aws, args).await),
            Command::LocalEmulator(args) => done(emulator::run(args.clone()).await),
        }
    });
    match result {
        Ok(code) => code,
        Err(err) => {
            match err.downcast_ref::<SpecError>() {
                Some(spec) => eprintln!("{:?}", miette::Report::new(spec.clone())),
                None => eprintln!("error: {err:#}"),
            }
            ExitCode::FAILURE
        }
    }
}
