//! The command line. [`COMMANDS`] is the one description of every command:
//! `--help` output, the README command table and the man page come from it.

use std::ffi::OsString;
use std::path::PathBuf;

use crate::config::{self, EXIT_CONFIG, Source};

/// EX_USAGE: the command line was wrong.
pub const EXIT_USAGE: i32 = 64;
/// Any other fatal error.
pub const EXIT_FAILURE: i32 = 1;

/// One command of `np-agent`.
#[derive(Debug, Clone, Copy)]
pub struct Command {
    pub name: &'static str,
    pub usage: &'static str,
    pub summary: &'static str,
    pub details: &'static str,
}

/// Every command, in the order `--help` lists them.
pub const COMMANDS: &[Command] = &[
    Command {
        name: "run",
        usage: "np-agent run [--env-file F]",
        summary: "run the daemon",
        details: "Without --env-file the configuration comes from the process environment \
(systemd EnvironmentFile=). Sends READY=1 to $NOTIFY_SOCKET once listening. SIGHUP reloads \
certificates, keys, trust, CRLs and partners without dropping work; SIGTERM drains within 10 s. \
Exit 0 on a clean stop, 78 on a configuration error, 1 on another fatal error.",
    },
    Command {
        name: "check-config",
        usage: "np-agent check-config [--env-file F]",
        summary: "validate the configuration and print every problem",
        details: "Prints one line per problem, each naming the key, and loads the certificate, \
key, trust bundle, CRLs and signing key to check they parse and match. Exit 0 when valid, 78 otherwise.",
    },
    Command {
        name: "doctor",
        usage: "np-agent doctor [--env-file F]",
        summary: "check configuration, key material, folders and partners",
        details: "Everything check-config does, plus: the TLS key matches the certificate, the \
chain is valid against the trust bundle and covers NP_PUBLIC_URL, days until each certificate and \
CRL expires, the signing key loads and verifies under its kid, the env file, key files and folders \
have the right owner and mode, and each partner is reachable over mutual TLS with its discovery \
document and JWKS fetchable. One line per check, OK, WARN or FAIL, each failure with the exact fix. \
Run it as root or as the service user. Exit 0 when nothing failed, 1 otherwise.",
    },
    Command {
        name: "demo",
        usage: "np-agent demo [--dir D] [--keep] [--with-localisation]",
        summary: "run the whole exchange on loopback with a throwaway PKI",
        details: "Starts two agents (this binary, np-agent run, twice: hospital A sends, hospital B \
receives) with a throwaway PKI on 127.0.0.1, drops a sample BgZ export into A's outbox, checks that \
B's inbox holds every exported resource unchanged, then sends an update and a cancellation, has a \
stand-in Mitz (its own certificate, its API served over mTLS) post a consent notification to B as the \
broker does (stored once, byte for byte), and last has B publish the patient's record to a stand-in \
Zorgviewer (its own certificate and JWKS): B subscribes the patient at the stand-in Mitz and asks it \
the closed question before it answers, so the Zorgviewer, with a client_credentials token, is served \
nothing while Mitz answers Deny and the whole record, with Meta.source, once Mitz has pushed a \
consent notification and answers Permit, both rounds in B's audit trail; each step is printed as it \
happens. --with-localisation adds stand-ins for the Ministry's OAuth server, PRS and NVI: B \
gets prs and nvi partners, registers the demo patient in the referral index under an OPRF \
pseudonym, and np-agent nvi localize finds B for the patient. --dir D works in D (kept \
afterwards); --keep keeps the temporary directory. \
Exit 0 only if everything arrived intact.",
    },
    Command {
        name: "jwks",
        usage: "np-agent jwks [--env-file F]",
        summary: "print our public JWKS",
        details: "Prints the JSON Web Key Set partners use to verify our assertions (the same \
document served at /.well-known/jwks.json).",
    },
    Command {
        name: "status",
        usage: "np-agent status [--env-file F] [--json]",
        summary: "show the spool: counts per state and the oldest item's age",
        details: "Counts the work in NP_STATE_DIR/spool: queued, in flight, waiting for retry, \
delivered (done) and given up (dead), and the age of the oldest unfinished item. --json prints \
{\"queued\":n,\"in_flight\":n,\"retry\":n,\"done\":n,\"dead\":n,\"oldest_age_s\":n}. \
Safe to run while the daemon runs.",
    },
    Command {
        name: "retry-dead",
        usage: "np-agent retry-dead [--env-file F] [--partner P]",
        summary: "requeue work that was given up",
        details: "Moves every dead spool item (of partner P, or of all partners) back to the queue \
with its attempts reset, e.g. after a partner's outage or a configuration fix. The running \
daemon picks them up within a second.",
    },
    Command {
        name: "audit",
        usage: "np-agent audit --patient <BSN> [--from D] [--to D] [--json]",
        summary: "who saw what of a patient and when, from the audit trail",
        details: "Reads NP_STATE_DIR/audit/YYYY-MM-DD.jsonl for the days from D to D (YYYY-MM-DD, \
both included; all days by default) and prints every record that names the patient, sorted by \
time: Twiin pulls (tokens, reads, searches, pulls), Tasks, exports, Mitz notifications and \
Zorgviewer reads. One line per record: time, partner, organisation, user/role, action, \
object or query, outcome (HTTP status, consent decision), result count and the resources \
returned. --json prints a JSON array of the records as written. The BSN appears on standard \
output only. Lines that are not audit records are skipped and counted on standard error. \
--env-file F as for the other commands. Safe to run while the daemon runs. Exit 0 (also when no \
record matched), 64 on a bad BSN or date, 78 on a configuration error, 1 when the audit trail \
cannot be read.",
    },
    Command {
        name: "mitz subscribe",
        usage: "np-agent mitz subscribe --bsn <BSN>|--from-file F [--env-file F]",
        summary: "subscribe patients at Mitz (back-fill)",
        details: "Queues the Mitz subscription of one patient (--bsn) or of every BSN in F (one a \
line, blank lines skipped) at each mitz partner with a URL, in the spool under NP_STATE_DIR; the \
running daemon makes them within seconds and retries while Mitz is unreachable. A patient whose \
record is published to a Zorgviewer partner with consent mitz is subscribed without this; it is \
for patients published before a Mitz partner had a URL. A patient recorded as subscribed, or whose \
subscription is queued already, is not queued again. Every BSN must pass the 11-test: a bad line \
is reported with its line number (never its content) and skipped. Prints how many were queued, \
already recorded and already queued. Run it as the service user (sudo -u np-agent) so the daemon \
can read what it writes. Exit 0, 1 when a line was bad or nothing could be queued (no spool yet, \
disk nearly full), 64 on a bad --bsn, 78 on a configuration error or when no mitz partner has a URL.",
    },
    Command {
        name: "mitz subscriptions",
        usage: "np-agent mitz subscriptions [--env-file F] [--json]",
        summary: "list the Mitz subscriptions made",
        details: "Prints one line per subscription Mitz confirmed: partner, BSN, Mitz's \
subscription id, when (UTC) and Mitz's answer (201 new, 202 it existed already), from \
NP_STATE_DIR/mitz/subscriptions. --json prints an array of objects with the keys partner, \
patient, subscription, subscribed_at and status. The BSN appears on standard output only. \
Queued and given-up subscriptions are spool work (np-agent status). Safe to run while the daemon \
runs. Exit 0, 1 when a record cannot be read, 78 on a configuration error.",
    },
    Command {
        name: "nvi register",
        usage: "np-agent nvi register --bsn <BSN>|--from-file F [--env-file F]",
        summary: "register patients in the national referral index (back-fill)",
        details: "Queues the registration of one patient (--bsn) or of every BSN in F (one a \
line, blank lines skipped) at each nvi partner, in the spool under NP_STATE_DIR; the running \
daemon evaluates the pseudonym at the prs partner and registers it within seconds, retrying while \
either is unreachable. A patient the hospital publishes data about through np-agent is registered \
without this; it is for patients published before an nvi partner was configured, and to register \
again a patient whose objection (np-agent nvi deregister) is lifted. A patient recorded as \
registered, or whose registration is queued already, is not queued again. Every BSN must pass the \
11-test: a bad line is reported with its line number (never its content) and skipped. Run it as \
the service user (sudo -u np-agent). Exit 0, 1 when a line was bad or nothing could be queued, 64 \
on a bad --bsn, 78 on a configuration error or when no nvi partner is configured.",
    },
    Command {
        name: "nvi deregister",
        usage: "np-agent nvi deregister --bsn <BSN> [--env-file F]",
        summary: "remove a patient's referral from the national referral index (objection)",
        details: "Queues the removal of our referral of the patient at each nvi partner (delete \
by query, under a fresh pseudonym) and records the objection: publishing more data of the patient \
does not register it again until np-agent nvi register --bsn. The running daemon carries it out \
within seconds, retrying while the services are unreachable. Run it as the service user. Exit 0, 1 \
when nothing could be queued, 64 on a bad --bsn, 78 on a configuration error or when no nvi partner \
is configured.",
    },
    Command {
        name: "nvi localize",
        usage: "np-agent nvi localize --bsn <BSN> [--env-file F] [--json]",
        summary: "ask the national referral index which organisations hold data on a patient",
        details: "Evaluates a fresh pseudonym of the patient at the prs partner and asks each nvi \
partner which organisations registered data about the patient: one line per organisation, \
<URA> <source id> <created_at> (- when the index gave no time). --json prints an array of objects \
with the keys ura, source_id and created_at. Needs the configuration and the key material of the \
service (run it as the service user). Exit 0 (also when none is known), 1 when a service could not \
be asked, 64 on a bad --bsn, 78 on a configuration error or when no nvi partner is configured.",
    },
    Command {
        name: "keygen",
        usage: "np-agent keygen --alg PS256|ES256|ES384|ES512 --out F",
        summary: "create a new signing key (PKCS#8 PEM, mode 0600)",
        details: "Writes a new private key for NP_SIGNING_KEY. Refuses to overwrite an existing \
file. Prints the key's kid (RFC 7638 thumbprint) and public JWK.",
    },
];

/// Entry point: returns the process exit code.
pub fn main(args: Vec<OsString>) -> i32 {
    let args: Vec<String> = match args.into_iter().skip(1).map(|a| a.into_string()).collect() {
        Ok(a) => a,
        Err(_) => {
            eprintln!("np-agent: arguments must be valid UTF-8");
            return EXIT_USAGE;
        }
    };
    let Some(first) = args.first() else {
        eprint!("{}", overview());
        return EXIT_USAGE;
    };
    match first.as_str() {
        "-h" | "--help" | "help" => {
            print!("{}", overview());
            return 0;
        }
        "-V" | "--version" => {
            println!("np-agent {}", env!("CARGO_PKG_VERSION"));
            return 0;
        }
        _ => {}
    }
    if first == "generate" {
        // Hidden: generated man pages and default env file, for packaging.
        return crate::manpage::main(&args[1..]);
    }
    // Commands of two words (`mitz subscribe`) are found by both.
    let (name, rest) = match (GROUPS.contains(&first.as_str()), args.get(1)) {
        (true, Some(sub)) if !sub.starts_with('-') => (format!("{first} {sub}"), &args[2..]),
        (true, sub) => {
            let help = group_help(first);
            if sub.is_some_and(|a| a == "-h" || a == "--help") {
                print!("{help}");
                return 0;
            }
            eprint!("{help}");
            return EXIT_USAGE;
        }
        (false, _) => (first.clone(), &args[1..]),
    };
    let Some(cmd) = COMMANDS.iter().find(|c| c.name == name) else {
        eprintln!("np-agent: unknown command {name:?}; see np-agent --help");
        return EXIT_USAGE;
    };
    if rest.iter().any(|a| a == "-h" || a == "--help") {
        print!("{}", command_help(cmd));
        return 0;
    }
    if rest.iter().any(|a| a == "-V" || a == "--version") {
        println!("np-agent {}", env!("CARGO_PKG_VERSION"));
        return 0;
    }
    let opts = match Options::parse(cmd, rest) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("np-agent {}: {e}\nusage: {}", cmd.name, cmd.usage);
            return EXIT_USAGE;
        }
    };
    match cmd.name {
        "run" => run(&opts),
        "check-config" => check_config(&opts),
        "jwks" => jwks(&opts),
        "keygen" => keygen(&opts),
        "status" => status(&opts),
        "demo" => crate::demo::run(opts.dir.clone(), opts.keep, opts.with_localisation),
        "retry-dead" => retry_dead(&opts),
        "doctor" => crate::doctor::run(opts.env_file.clone()),
        "audit" => audit(&opts, cmd.usage),
        "mitz subscribe" => mitz_subscribe(&opts, cmd.usage),
        "mitz subscriptions" => mitz_subscriptions(&opts),
        "nvi register" | "nvi deregister" => nvi_queue(&opts, cmd),
        "nvi localize" => nvi_localize(&opts, cmd.usage),
        _ => EXIT_USAGE,
    }
}

/// First words of the commands that have two.
const GROUPS: &[&str] = &["mitz", "nvi"];

/// `np-agent mitz` without a subcommand: the usage of each.
fn group_help(group: &str) -> String {
    let mut s = String::from("usage:\n");
    for c in COMMANDS
        .iter()
        .filter(|c| c.name.split(' ').next() == Some(group))
    {
        s.push_str(&format!("  {}\n", c.usage));
    }
    s.push_str(&format!(
        "\nRun 'np-agent {group} <command> --help' for more.\n"
    ));
    s
}

/// `np-agent --help`.
pub fn overview() -> String {
    let mut s = format!(
        "np-agent {} — edge agent for Dutch health data exchange (Twiin TA Notified Pull, Mitz, Zorgviewer)\n\n\
         usage: np-agent <command> [options]\n\ncommands:\n",
        env!("CARGO_PKG_VERSION")
    );
    for c in COMMANDS {
        s.push_str(&format!("  {:<19} {}\n", c.name, c.summary));
    }
    s.push_str(&format!(
        "\noptions:\n  --env-file F   read configuration from F (systemd EnvironmentFile syntax; \
         the service uses {})\n  -h, --help     help for np-agent or a command\n  -V, --version  print the version\n\n\
         Run 'np-agent <command> --help' for more.\n",
        config::DEFAULT_ENV_FILE
    ));
    s
}

/// `np-agent <command> --help`.
pub fn command_help(cmd: &Command) -> String {
    format!(
        "usage: {}\n\n{}.\n\n{}\n",
        cmd.usage,
        cmd.summary,
        wrap(cmd.details, 78)
    )
}

fn wrap(text: &str, width: usize) -> String {
    let mut out = String::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.len() + 1 + word.len() > width {
            out.push_str(&line);
            out.push('\n');
            line.clear();
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    out.push_str(&line);
    out
}

#[derive(Debug, Default)]
struct Options {
    env_file: Option<PathBuf>,
    alg: Option<String>,
    out: Option<PathBuf>,
    json: bool,
    partner: Option<String>,
    dir: Option<PathBuf>,
    keep: bool,
    with_localisation: bool,
    patient: Option<String>,
    from: Option<String>,
    to: Option<String>,
    bsn: Option<String>,
    from_file: Option<PathBuf>,
}

impl Options {
    fn parse(cmd: &Command, args: &[String]) -> Result<Options, String> {
        let mut o = Options::default();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let (flag, inline) = match a.split_once('=') {
                Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
                _ => (a.as_str(), None),
            };
            let mut value = |name: &str| -> Result<String, String> {
                inline
                    .clone()
                    .or_else(|| it.next().cloned())
                    .filter(|v| !v.is_empty())
                    .ok_or_else(|| format!("{name} needs a value"))
            };
            match (cmd.name, flag) {
                (_, "--env-file") if !matches!(cmd.name, "keygen" | "demo") => {
                    o.env_file = Some(value("--env-file")?.into())
                }
                ("keygen", "--alg") => o.alg = Some(value("--alg")?),
                ("keygen", "--out") => o.out = Some(value("--out")?.into()),
                ("status" | "audit" | "mitz subscriptions" | "nvi localize", "--json")
                    if inline.is_none() =>
                {
                    o.json = true
                }
                (
                    "mitz subscribe" | "nvi register" | "nvi deregister" | "nvi localize",
                    "--bsn",
                ) => o.bsn = Some(value("--bsn")?),
                ("mitz subscribe" | "nvi register", "--from-file") => {
                    o.from_file = Some(value("--from-file")?.into())
                }
                ("audit", "--patient") => o.patient = Some(value("--patient")?),
                ("audit", "--from") => o.from = Some(value("--from")?),
                ("audit", "--to") => o.to = Some(value("--to")?),
                ("demo", "--dir") => o.dir = Some(value("--dir")?.into()),
                ("demo", "--keep") if inline.is_none() => o.keep = true,
                ("demo", "--with-localisation") if inline.is_none() => o.with_localisation = true,
                ("retry-dead", "--partner") => o.partner = Some(value("--partner")?),
                _ => return Err(format!("unexpected argument {a:?}")),
            }
        }
        if cmd.name == "keygen" && (o.alg.is_none() || o.out.is_none()) {
            return Err("--alg and --out are required".into());
        }
        if cmd.name == "audit" && o.patient.is_none() {
            return Err("--patient is required".into());
        }
        if matches!(cmd.name, "mitz subscribe" | "nvi register")
            && o.bsn.is_some() == o.from_file.is_some()
        {
            return Err("give either --bsn or --from-file".into());
        }
        if matches!(cmd.name, "nvi deregister" | "nvi localize") && o.bsn.is_none() {
            return Err("--bsn is required".into());
        }
        Ok(o)
    }

    fn source(&self) -> Source {
        match &self.env_file {
            Some(f) => Source::File(f.clone()),
            None => Source::Process,
        }
    }
}

/// Loads configuration or prints every problem and returns the exit code.
fn load_config(opts: &Options) -> Result<config::Config, i32> {
    config::load(&opts.source()).map_err(|errors| {
        for e in &errors {
            eprintln!("config error: {e}");
        }
        EXIT_CONFIG
    })
}

fn run(opts: &Options) -> i32 {
    let cfg = match load_config(opts) {
        Ok(c) => c,
        Err(code) => {
            // Also to the log stream, so journald shows why the unit stopped.
            crate::ops::logging::init(log::LevelFilter::Info);
            log::error!("event=startup.failed reason=configuration exit={code}");
            return code;
        }
    };
    crate::daemon::run(cfg, opts.env_file.clone())
}

fn check_config(opts: &Options) -> i32 {
    let cfg = match load_config(opts) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let problems = crate::daemon::check_material(&cfg);
    if problems.is_empty() {
        println!(
            "configuration OK: {} partner(s), listening on {}, public URL {}",
            cfg.partners.len(),
            cfg.listen,
            cfg.public_url
        );
        0
    } else {
        for p in &problems {
            eprintln!("config error: {p}");
        }
        EXIT_CONFIG
    }
}

fn jwks(opts: &Options) -> i32 {
    let cfg = match load_config(opts) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match crate::daemon::load_signing_key(&cfg) {
        Ok(key) => match crate::jose::Jwks::new(vec![key.public_jwk()]) {
            Ok(set) => {
                println!("{}", set.to_json());
                0
            }
            Err(e) => {
                eprintln!("config error: NP_SIGNING_KEY: {e}");
                EXIT_CONFIG
            }
        },
        Err(e) => {
            eprintln!("config error: {e}");
            EXIT_CONFIG
        }
    }
}

fn keygen(opts: &Options) -> i32 {
    let (Some(alg_name), Some(out)) = (&opts.alg, &opts.out) else {
        return EXIT_USAGE;
    };
    let alg = match crate::jose::Alg::from_name(alg_name) {
        Some(a) if config::SIGNING_ALGS.contains(&a) => a,
        _ => {
            eprintln!(
                "np-agent keygen: --alg {alg_name:?} must be one of {}",
                config::alg_names(config::SIGNING_ALGS)
            );
            return EXIT_USAGE;
        }
    };
    let pem = match crate::jose::generate_pkcs8_pem(alg) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("np-agent keygen: key generation failed: {e}");
            return EXIT_FAILURE;
        }
    };
    let key = match crate::jose::SigningKey::from_pkcs8_pem(&pem, alg, None) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("np-agent keygen: the new key does not load: {e}");
            return EXIT_FAILURE;
        }
    };
    if let Err(e) = write_new_secret(out, pem.as_bytes()) {
        eprintln!("np-agent keygen: {}: {e}", out.display());
        return EXIT_FAILURE;
    }
    println!(
        "wrote {} ({}), kid {}",
        out.display(),
        alg.name(),
        key.kid()
    );
    println!("{}", key.public_jwk().to_json());
    0
}

fn open_spool(cfg: &config::Config) -> Result<crate::spool::Spool, i32> {
    // Opening runs recovery, which is only safe when no daemon is running, so
    // read-only commands look at the folders without opening.
    crate::spool::Spool::at(&cfg.state_dir).map_err(|e| {
        eprintln!("np-agent: {e}");
        EXIT_FAILURE
    })
}

/// The spool for a command that queues work beside the daemon: refused,
/// with nothing queued, while the state folder's disk is below
/// `NP_MIN_FREE_DISK`, as the daemon's own intake is.
fn open_spool_to_queue(cfg: &config::Config, cmd: &str) -> Result<crate::spool::Spool, i32> {
    if let Ok(free) = crate::backpressure::free_bytes(&cfg.state_dir) {
        if crate::backpressure::decide(free, cfg.min_free_disk, false) {
            eprintln!(
                "{cmd}: NP_STATE_DIR has {free} bytes free, below NP_MIN_FREE_DISK ({}): nothing queued; try again when space returns",
                cfg.min_free_disk
            );
            return Err(EXIT_FAILURE);
        }
    }
    open_spool(cfg)
}

fn status(opts: &Options) -> i32 {
    let cfg = match load_config(opts) {
        Ok(c) => c,
        Err(code) => return code,
    };
    // Read only, beside the daemon; before its first start the spool is empty.
    match crate::spool::Spool::counts_at(&cfg.state_dir, crate::util::time::now_unix()) {
        Ok(c) if opts.json => {
            println!(
                "{{\"queued\":{},\"in_flight\":{},\"retry\":{},\"done\":{},\"dead\":{},\"oldest_age_s\":{}}}",
                c.queued, c.in_flight, c.retry, c.done, c.dead, c.oldest_age_s
            );
            0
        }
        Ok(c) => {
            println!("queued      {}", c.queued);
            println!("in flight   {}", c.in_flight);
            println!("retry       {}", c.retry);
            println!("delivered   {}", c.done);
            println!("dead        {}", c.dead);
            println!("oldest      {} s", c.oldest_age_s);
            0
        }
        Err(e) => {
            eprintln!("np-agent status: {e}");
            EXIT_FAILURE
        }
    }
}

fn retry_dead(opts: &Options) -> i32 {
    let cfg = match load_config(opts) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if let Some(p) = &opts.partner {
        if cfg.partner(p).is_none() {
            eprintln!("np-agent retry-dead: --partner {p:?} is not a configured partner");
            return EXIT_USAGE;
        }
    }
    let spool = match open_spool(&cfg) {
        Ok(s) => s,
        Err(code) => return code,
    };
    match spool.requeue_dead(opts.partner.as_deref(), crate::util::time::now_unix()) {
        Ok(n) => {
            println!("requeued {n} item(s)");
            0
        }
        Err(e) => {
            eprintln!("np-agent retry-dead: {e}");
            EXIT_FAILURE
        }
    }
}

/// `np-agent audit`: the records of one patient, to stdout only.
fn audit(opts: &Options, usage: &str) -> i32 {
    use crate::audit::{query, trail};
    let query = match query::Query::new(
        opts.patient.as_deref().unwrap_or_default(),
        opts.from.as_deref(),
        opts.to.as_deref(),
    ) {
        Ok(q) => q,
        Err(e) => {
            eprintln!("np-agent audit: {e}\nusage: {usage}");
            return EXIT_USAGE;
        }
    };
    let cfg = match load_config(opts) {
        Ok(c) => c,
        Err(code) => return code,
    };
    // Read only, beside the daemon: appends never rewrite a line already read.
    let scan = match trail::scan(&cfg.state_dir, &query) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("np-agent audit: cannot read the audit trail: {e}");
            return EXIT_FAILURE;
        }
    };
    for (file, n) in &scan.skipped {
        eprintln!("np-agent audit: {file}: skipped {n} line(s) that are not audit records");
    }
    for e in &scan.failed {
        eprintln!("np-agent audit: cannot read {e}");
    }
    let out = if opts.json {
        query::json_array(scan.matches.iter().map(|m| m.line.as_str()))
    } else {
        let rows: Vec<query::Row> = scan
            .matches
            .iter()
            .map(|m| query::Row::of(&m.record))
            .collect();
        query::table(&rows)
    };
    if let Err(e) = write_stdout(out.as_bytes()) {
        eprintln!("np-agent audit: standard output: {e}");
        return EXIT_FAILURE;
    }
    if scan.matches.is_empty() {
        eprintln!(
            "np-agent audit: no audit record names this patient{} ({} day file(s) read)",
            query.range_label(),
            scan.files
        );
    }
    if scan.failed.is_empty() {
        0
    } else {
        EXIT_FAILURE
    }
}

/// `np-agent mitz subscribe`: queue the subscriptions of the given patients
/// in the spool of the (running) daemon.
fn mitz_subscribe(opts: &Options, usage: &str) -> i32 {
    use crate::mitz::subscribe::{Queued, SubscriptionStore, queue};
    use crate::mitz::subscription::Origin;
    const CMD: &str = "np-agent mitz subscribe";
    // The patients, and whether an input line was bad.
    let (patients, bad_lines) = match (&opts.bsn, &opts.from_file) {
        (Some(bsn), _) => match crate::ids::Bsn::parse(bsn) {
            Some(b) => (vec![b], false),
            None => {
                eprintln!(
                    "{CMD}: --bsn is not a valid BSN (9 digits passing the 11-test)\nusage: {usage}"
                );
                return EXIT_USAGE;
            }
        },
        (None, Some(file)) => match read_bsn_file(file, CMD) {
            Ok(read) => read,
            Err(e) => {
                eprintln!("{CMD}: {}: {e}", file.display());
                return EXIT_FAILURE;
            }
        },
        (None, None) => return EXIT_USAGE,
    };
    let cfg = match load_config(opts) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let apis: Vec<config::MitzApi<'_>> = cfg.mitz_apis().collect();
    if apis.is_empty() {
        eprintln!(
            "config error: no mitz partner has a URL (NP_PARTNER_<NAME>_URL): there is no Mitz to subscribe at"
        );
        return EXIT_CONFIG;
    }
    let spool = match open_spool_to_queue(&cfg, CMD) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let store = SubscriptionStore::reader(&cfg.state_dir);
    let now = crate::util::time::now_unix();
    let (mut queued, mut recorded, mut pending) = (0usize, 0usize, 0usize);
    for patient in &patients {
        for api in &apis {
            match queue(&spool, &store, *api, patient, Origin::Backfill, now) {
                Ok(Queued::New) => queued += 1,
                Ok(Queued::Recorded) => recorded += 1,
                Ok(Queued::Pending) => pending += 1,
                Err(e) => {
                    eprintln!(
                        "{CMD}: {e}\nqueued {queued} before the failure; run the command again to queue the rest"
                    );
                    return EXIT_FAILURE;
                }
            }
        }
    }
    let names: Vec<&str> = apis.iter().map(|a| a.name).collect();
    println!(
        "queued {queued} subscription(s), {recorded} already recorded, {pending} already queued (Mitz partner(s): {}; {} patient(s))",
        names.join(", "),
        patients.len()
    );
    if bad_lines { EXIT_FAILURE } else { 0 }
}

/// The BSNs of a file, one a line (blank lines skipped). A bad line is
/// reported on standard error with its number, not its content, and
/// skipped; the flag says whether there was one.
fn read_bsn_file(
    path: &std::path::Path,
    cmd: &str,
) -> std::io::Result<(Vec<crate::ids::Bsn>, bool)> {
    let text = std::fs::read_to_string(path)?;
    let (mut patients, mut bad) = (Vec::new(), false);
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        match crate::ids::Bsn::parse(line) {
            Some(b) => patients.push(b),
            None => {
                eprintln!(
                    "{cmd}: {} line {}: not a valid BSN (9 digits passing the 11-test); skipped",
                    path.display(),
                    i + 1
                );
                bad = true;
            }
        }
    }
    Ok((patients, bad))
}

/// The configuration of an `nvi` command: loaded, with at least one nvi
/// partner (78 otherwise).
fn nvi_config(opts: &Options) -> Result<config::Config, i32> {
    let cfg = load_config(opts)?;
    if cfg.nvi_partners().next().is_none() {
        eprintln!(
            "config error: no nvi partner is configured (NP_PARTNER_<NAME>_KIND=nvi): there is no referral index"
        );
        return Err(EXIT_CONFIG);
    }
    Ok(cfg)
}

/// `np-agent nvi register|deregister`: queue registrations (back-fill) or
/// removals (objections) in the spool of the (running) daemon.
fn nvi_queue(opts: &Options, cmd: &Command) -> i32 {
    use crate::nvi::{Origin, Queued, queue};
    let name = format!("np-agent {}", cmd.name);
    let origin = if cmd.name == "nvi register" {
        Origin::Backfill
    } else {
        Origin::Objection
    };
    let (patients, bad_lines) = match (&opts.bsn, &opts.from_file) {
        (Some(bsn), _) => match crate::ids::Bsn::parse(bsn) {
            Some(b) => (vec![b], false),
            None => {
                eprintln!(
                    "{name}: --bsn is not a valid BSN (9 digits passing the 11-test)\nusage: {}",
                    cmd.usage
                );
                return EXIT_USAGE;
            }
        },
        (None, Some(file)) => match read_bsn_file(file, &name) {
            Ok(read) => read,
            Err(e) => {
                eprintln!("{name}: {}: {e}", file.display());
                return EXIT_FAILURE;
            }
        },
        (None, None) => return EXIT_USAGE,
    };
    let cfg = match nvi_config(opts) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let spool = match open_spool_to_queue(&cfg, &name) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let store = crate::nvi::store::RegistrationStore::reader(&cfg.state_dir);
    let now = crate::util::time::now_unix();
    let (mut queued, mut nothing, mut pending) = (0usize, 0usize, 0usize);
    let indexes: Vec<config::NviPartner<'_>> = cfg.nvi_partners().collect();
    for patient in &patients {
        for nvi in &indexes {
            match queue(&spool, &store, *nvi, patient, origin, now) {
                Ok(Queued::New) => queued += 1,
                Ok(Queued::Nothing | Queued::Objected) => nothing += 1,
                Ok(Queued::Pending) => pending += 1,
                Err(e) => {
                    eprintln!(
                        "{name}: {e}\nqueued {queued} before the failure; run the command again to queue the rest"
                    );
                    return EXIT_FAILURE;
                }
            }
        }
    }
    let names: Vec<&str> = indexes.iter().map(|n| n.name).collect();
    let what = if origin == Origin::Backfill {
        "registration(s)"
    } else {
        "removal(s)"
    };
    println!(
        "queued {queued} {what}, {nothing} with nothing to do (registered already, or objected), {pending} already queued (nvi partner(s): {}; {} patient(s))",
        names.join(", "),
        patients.len()
    );
    if bad_lines { EXIT_FAILURE } else { 0 }
}

/// `np-agent nvi localize`: ask every index, print what they know.
fn nvi_localize(opts: &Options, usage: &str) -> i32 {
    const CMD: &str = "np-agent nvi localize";
    let Some(patient) = opts.bsn.as_deref().and_then(crate::ids::Bsn::parse) else {
        eprintln!("{CMD}: --bsn is not a valid BSN (9 digits passing the 11-test)\nusage: {usage}");
        return EXIT_USAGE;
    };
    let cfg = match nvi_config(opts) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let files = crate::pki::TlsFiles {
        cert: cfg.tls_cert.clone(),
        key: cfg.tls_key.clone(),
        trust: cfg.tls_trust.clone(),
        crl_dir: cfg.tls_crl_dir.clone(),
    };
    let client = match crate::pki::TlsMaterial::load(&files)
        .map_err(|e| format!("{}: {e}", e.config_key()))
        .and_then(|m| {
            crate::pki::client_config(&m, cfg.tls_min_version)
                .map_err(|e| format!("NP_TLS_CERT: {e}"))
        }) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("config error: {e}");
            return EXIT_CONFIG;
        }
    };
    let http = crate::http::partners::Partners::new(
        client,
        crate::http::client::ClientTimeouts::default(),
    );
    let tokens = crate::nvi::token::ServiceTokens::new();
    let now = crate::util::time::now_unix();
    let (mut found, mut failed) = (Vec::new(), false);
    for nvi in cfg.nvi_partners() {
        let attempt = crate::nvi::work::Attempt {
            config: &cfg,
            tokens: &tokens,
            http: &http,
            nvi,
            item: "nvi-localize",
            now,
        };
        match attempt.localize(&patient) {
            Ok(rows) => found.extend(rows),
            Err(e) => {
                eprintln!("{CMD}: {}", e.reason());
                failed = true;
            }
        }
    }
    let out = if opts.json {
        let rows: Vec<serde_json::Value> = found
            .iter()
            .map(|r| serde_json::json!({"ura": r.ura, "source_id": r.source_id, "created_at": r.created_at}))
            .collect();
        format!("{}\n", serde_json::Value::Array(rows))
    } else {
        found
            .iter()
            .map(|r| {
                format!(
                    "{} {} {}\n",
                    r.ura,
                    if r.source_id.is_empty() {
                        "-"
                    } else {
                        &r.source_id
                    },
                    r.created_at.as_deref().unwrap_or("-")
                )
            })
            .collect()
    };
    if let Err(e) = write_stdout(out.as_bytes()) {
        eprintln!("{CMD}: standard output: {e}");
        return EXIT_FAILURE;
    }
    if failed { EXIT_FAILURE } else { 0 }
}

/// `np-agent mitz subscriptions`: what Mitz confirmed, to stdout only.
fn mitz_subscriptions(opts: &Options) -> i32 {
    let cfg = match load_config(opts) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let store = crate::mitz::subscribe::SubscriptionStore::reader(&cfg.state_dir);
    let (found, failed) = match store.list() {
        Ok(l) => l,
        Err(e) => {
            eprintln!("np-agent mitz subscriptions: {e}");
            return EXIT_FAILURE;
        }
    };
    for e in &failed {
        eprintln!("np-agent mitz subscriptions: skipped {e}");
    }
    let when = |r: &crate::mitz::subscribe::Recorded| crate::util::time::rfc3339(r.subscribed_at);
    let out = if opts.json {
        let rows: Vec<serde_json::Value> = found
            .iter()
            .map(|r| {
                serde_json::json!({
                    "partner": r.partner,
                    "patient": r.patient,
                    "subscription": r.subscription,
                    "subscribed_at": when(r),
                    "status": r.status,
                })
            })
            .collect();
        format!("{}\n", serde_json::Value::Array(rows))
    } else {
        let mut rows = vec![[
            "partner".to_string(),
            "patient".to_string(),
            "subscription".to_string(),
            "subscribed_at".to_string(),
            "status".to_string(),
        ]];
        rows.extend(found.iter().map(|r| {
            [
                r.partner.clone(),
                r.patient.clone(),
                r.subscription.clone().unwrap_or_else(|| "-".into()),
                when(r),
                r.status.to_string(),
            ]
        }));
        let widths: Vec<usize> = (0..5)
            .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
            .collect();
        rows.iter()
            .map(|r| {
                let cells: Vec<String> = r
                    .iter()
                    .zip(&widths)
                    .map(|(c, w)| format!("{c:<w$}"))
                    .collect();
                format!("{}\n", cells.join("  ").trim_end())
            })
            .collect()
    };
    if let Err(e) = write_stdout(out.as_bytes()) {
        eprintln!("np-agent mitz subscriptions: standard output: {e}");
        return EXIT_FAILURE;
    }
    if failed.is_empty() { 0 } else { EXIT_FAILURE }
}

/// Writes all of `bytes` to stdout; a reader that went away (`| head`) is
/// not an error.
fn write_stdout(bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

/// Creates `path` with mode 0600, refusing to overwrite, durably.
fn write_new_secret(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                std::io::Error::new(e.kind(), "file exists; refusing to overwrite a key")
            } else {
                e
            }
        })?;
    f.write_all(bytes)?;
    f.sync_all()?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(cmd: &str, args: &[&str]) -> Result<Options, String> {
        let c = COMMANDS.iter().find(|c| c.name == cmd).unwrap();
        Options::parse(c, &args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn option_parsing() {
        assert_eq!(
            opts("run", &["--env-file", "/x.env"]).unwrap().env_file,
            Some("/x.env".into())
        );
        assert_eq!(
            opts("run", &["--env-file=/y.env"]).unwrap().env_file,
            Some("/y.env".into())
        );
        assert!(opts("run", &["--env-file"]).is_err());
        assert!(opts("run", &["--bogus"]).is_err());
        assert!(opts("run", &["--alg", "PS256"]).is_err());
        let k = opts("keygen", &["--alg", "ES256", "--out", "k.pem"]).unwrap();
        assert_eq!(
            (k.alg.as_deref(), k.out),
            (Some("ES256"), Some("k.pem".into()))
        );
        assert!(opts("keygen", &["--alg", "ES256"]).is_err());
        assert!(opts("keygen", &["--env-file", "x"]).is_err());
        let a = opts(
            "audit",
            &[
                "--patient",
                "999999151",
                "--from=2026-03-01",
                "--to",
                "2026-03-02",
                "--json",
            ],
        )
        .unwrap();
        assert_eq!(
            (
                a.patient.as_deref(),
                a.from.as_deref(),
                a.to.as_deref(),
                a.json
            ),
            (
                Some("999999151"),
                Some("2026-03-01"),
                Some("2026-03-02"),
                true
            )
        );
        assert!(opts("audit", &["--json"]).is_err());
        assert!(opts("audit", &["--patient"]).is_err());
        assert!(opts("status", &["--patient", "999999151"]).is_err());
        let m = opts("mitz subscribe", &["--bsn", "999999151"]).unwrap();
        assert_eq!((m.bsn.as_deref(), m.from_file), (Some("999999151"), None));
        let m = opts("mitz subscribe", &["--from-file=/x.txt"]).unwrap();
        assert_eq!(m.from_file, Some("/x.txt".into()));
        assert!(opts("mitz subscribe", &[]).is_err(), "one of the two");
        assert!(opts("mitz subscribe", &["--bsn", "1", "--from-file", "f"]).is_err());
        assert!(opts("mitz subscribe", &["--json"]).is_err());
        assert!(opts("mitz subscriptions", &["--json"]).unwrap().json);
        assert!(opts("mitz subscriptions", &["--bsn", "999999151"]).is_err());
    }

    #[test]
    fn help_texts_cover_every_command() {
        let o = overview();
        for c in COMMANDS {
            assert!(o.contains(c.name));
            let h = command_help(c);
            assert!(h.starts_with(&format!("usage: {}", c.usage)));
            assert!(h.lines().all(|l| l.len() <= 80), "{h}");
        }
    }
}
