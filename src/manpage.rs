//! Generated documentation: the man pages `np-agent(8)` and `np-agent.env(5)`
//! and the commented default env file, all from [`crate::cli::COMMANDS`] and
//! [`crate::config::KEYS`] / [`crate::config::PARTNER_KEYS`], the same tables
//! that drive `--help` and the configuration parser. The packages ship the
//! generated files from `packaging/`; a test fails when they are not current.
//!
//! The hidden command `np-agent generate <what>` prints one of them:
//!
//! | what | prints | committed as |
//! |---|---|---|
//! | `man8` | `np-agent(8)` | `packaging/man/np-agent.8` |
//! | `man5` | `np-agent.env(5)` | `packaging/man/np-agent.env.5` |
//! | `env` | the default env file | `packaging/np-agent.env` |
//! | `required-keys` | the keys a site must fill in, one a line | — |

use crate::cli::COMMANDS;
use crate::config::{DEFAULT_ENV_FILE, KEYS, KeySpec, PARTNER_KEYS, required_keys};

/// What `np-agent generate` can print, with the committed file it matches.
pub const GENERATED: &[(&str, &str)] = &[
    ("man8", "packaging/man/np-agent.8"),
    ("man5", "packaging/man/np-agent.env.5"),
    ("env", "packaging/np-agent.env"),
];

/// Suggested values for the required keys in the default env file: the
/// layout the README's install steps use.
const SUGGESTED: &[(&str, &str)] = &[
    ("NP_PUBLIC_URL", "https://np.hospital.example:8443"),
    ("NP_TLS_CERT", "/etc/np-agent/tls.crt"),
    ("NP_TLS_KEY", "/etc/np-agent/tls.key"),
    ("NP_TLS_TRUST", "/etc/np-agent/trust.pem"),
    ("NP_SIGNING_KEY", "/etc/np-agent/signing.pem"),
    ("NP_ORG_URA", "12345678"),
];

/// `np-agent generate <what>`: prints the named document; returns the exit code.
pub fn main(args: &[String]) -> i32 {
    let usage = "usage: np-agent generate man8|man5|env|required-keys";
    let [what] = args else {
        eprintln!("{usage}");
        return crate::cli::EXIT_USAGE;
    };
    let text = match what.as_str() {
        "-h" | "--help" => {
            println!(
                "{usage}\n\nPrints a generated man page or the default env file (for packaging)."
            );
            return 0;
        }
        "required-keys" => required_keys().map(|k| format!("{k}\n")).collect(),
        other => match generate(other) {
            Some(t) => t,
            None => {
                eprintln!("np-agent generate: unknown document {other:?}\n{usage}");
                return crate::cli::EXIT_USAGE;
            }
        },
    };
    print!("{text}");
    0
}

/// The document named `what` (`man8`, `man5`, `env`).
pub fn generate(what: &str) -> Option<String> {
    match what {
        "man8" => Some(page_8()),
        "man5" => Some(page_5()),
        "env" => Some(default_env_file()),
        _ => None,
    }
}

/// `np-agent(8)`.
pub fn page_8() -> String {
    let mut m = Roff::new("NP\\-AGENT", 8, "System Administration");
    m.section("NAME");
    m.text("np-agent - edge agent for Dutch health data exchange");
    m.section("SYNOPSIS");
    for (i, c) in COMMANDS.iter().enumerate() {
        if i > 0 {
            m.raw(".br");
        }
        m.bold_line(c.usage);
    }
    m.section("DESCRIPTION");
    m.text(
        "np-agent connects a hospital's EHR to the Dutch health information exchange: \
         Twiin TA Notified Pull in both roles, Mitz consent notifications and Zorgviewer \
         source access. The EHR talks to it through folders (an outbox it exports into, an \
         inbox it imports from); partners talk to it over mutual TLS. It runs as the \
         systemd service np-agent.service under the user np-agent, configured by one env \
         file, described in np-agent.env(5).",
    );
    m.section("COMMANDS");
    for c in COMMANDS {
        m.tagged(
            c.usage,
            &format!("{}. {}", capitalise(c.summary), c.details),
        );
    }
    m.section("OPTIONS");
    m.tagged(
        "--env-file F",
        &format!(
            "Read the configuration from F (systemd EnvironmentFile syntax). The service uses {DEFAULT_ENV_FILE}."
        ),
    );
    m.tagged("-h, --help", "Help for np-agent or a command.");
    m.tagged("-V, --version", "Print the version.");
    m.section("SIGNALS");
    m.tagged(
        "SIGHUP",
        "Reload: re-read the env file (only when started with --env-file), certificates, \
         keys, trust bundle, CRLs and partners. Anything wrong keeps the running \
         configuration and logs event=reload.refused naming the problem. \
         systemctl reload np-agent sends it.",
    );
    m.tagged(
        "SIGTERM, SIGINT",
        "Stop accepting, drain in-flight work for up to 10 s, exit 0.",
    );
    m.section("EXIT STATUS");
    m.tagged("0", "Success; for doctor: no check failed.");
    m.tagged(
        "1",
        "A fatal error other than configuration; for doctor: a check failed.",
    );
    m.tagged("64", "The command line was wrong.");
    m.tagged(
        "78",
        "Configuration error (EX_CONFIG). The unit's RestartPreventExitStatus=78 stops \
         systemd from restarting a broken configuration.",
    );
    m.section("FILES");
    m.tagged(DEFAULT_ENV_FILE, "The configuration; see np-agent.env(5).");
    m.tagged(
        "/usr/lib/systemd/system/np-agent.service",
        "The hardened service unit. Change it with systemctl edit np-agent.",
    );
    m.tagged(
        "/var/lib/np-agent",
        "Default outbox, inbox and state (spool, replay cache, hashed tokens, audit trail).",
    );
    m.section("SEE ALSO");
    m.text("np-agent.env(5), systemd.service(5), journalctl(1)");
    m.finish()
}

/// `np-agent.env(5)`.
pub fn page_5() -> String {
    let mut m = Roff::new("NP\\-AGENT.ENV", 5, "File Formats");
    m.section("NAME");
    m.text("np-agent.env - configuration of np-agent");
    m.section("SYNOPSIS");
    m.text(DEFAULT_ENV_FILE);
    m.section("DESCRIPTION");
    m.text(
        "One env file in systemd EnvironmentFile= syntax: KEY=VALUE lines, # or ; comments, \
         blank lines, values in double quotes (with \\\", \\\\, \\$, \\` and \\n escapes) or \
         single quotes (literal), a trailing backslash continues a line, an optional export \
         prefix. Only paths and settings go in it: key material lives in separate files, \
         which must not be accessible to group or others (chmod 600) and must belong to the \
         service user np-agent.",
    );
    m.text(
        "Every key starts with NP_. An unknown NP_ key, a missing required key, a bad value \
         or an unreadable file is reported on its own line naming the key and the line, \
         and np-agent exits with status 78. np-agent check-config and np-agent doctor check \
         a file before use; systemctl reload np-agent applies a changed file.",
    );
    m.text(
        "Durations are <n>s, <n>m, <n>h or <n>d; sizes are bytes or <n>KiB, <n>MiB or \
         <n>GiB; booleans are true or false.",
    );
    m.section("KEYS");
    for k in KEYS {
        m.tagged(k.name, &key_doc(k));
    }
    m.section("PARTNER KEYS");
    m.text(
        "NP_PARTNERS lists the partners by name ([a-z0-9]{1,32}); each partner NAME has \
         these keys, with NAME in upper case:",
    );
    for k in PARTNER_KEYS {
        m.tagged(&format!("NP_PARTNER_<NAME>_{}", k.name), &key_doc(k));
    }
    m.section("EXAMPLE");
    m.raw(".nf");
    for (k, v) in SUGGESTED {
        m.raw(&escape(&format!("{k}={v}")));
    }
    m.raw(&escape("NP_PARTNERS=vip"));
    m.raw(&escape(
        "NP_PARTNER_VIP_FHIR_BASE=https://fhir.partner.example/fhir",
    ));
    m.raw(&escape("NP_PARTNER_VIP_ORG=ura:87654321"));
    m.raw(&escape("NP_PARTNER_VIP_CERT=ura:87654321"));
    m.raw(".fi");
    m.section("FILES");
    m.tagged(
        DEFAULT_ENV_FILE,
        "Installed as a configuration file (kept on upgrade and remove), mode 0640, owner \
         root, group np-agent.",
    );
    m.section("SEE ALSO");
    m.text("np-agent(8), systemd.exec(5)");
    m.finish()
}

/// The commented default env file installed as `/etc/np-agent/np-agent.env`.
/// Required keys are commented out with a suggested value, so that
/// `check-config` on a fresh install names exactly the keys to fill in;
/// every other key is commented out at its default.
pub fn default_env_file() -> String {
    let mut s = String::new();
    let rule = "#".repeat(76);
    // No version in here: a conffile that changes with every release would
    // make dpkg ask about it on every upgrade.
    s.push_str(&format!(
        "# {DEFAULT_ENV_FILE}: configuration of np-agent.\n\
         # Every key is described in np-agent.env(5) and in the README.\n\
         #\n\
         # Syntax: systemd EnvironmentFile (KEY=VALUE, # comments, \"double\" or\n\
         # 'single' quotes). Only paths and settings go here; key files live beside\n\
         # this file, owned by np-agent and mode 0600.\n\
         #\n\
         # After a change: np-agent doctor, then systemctl reload np-agent.\n\n"
    ));
    s.push_str(&format!(
        "{rule}\n# Required: a site must fill in every key of this section.\n{rule}\n\n"
    ));
    for k in KEYS.iter().filter(|k| k.required) {
        let value = SUGGESTED
            .iter()
            .find(|(n, _)| *n == k.name)
            .map(|(_, v)| *v)
            .unwrap_or_default();
        s.push_str(&comment(k.doc));
        s.push_str(&format!("#{}={value}\n\n", k.name));
    }
    s.push_str(&format!(
        "{rule}\n# Optional: shown at their defaults.\n{rule}\n\n"
    ));
    for k in KEYS.iter().filter(|k| !k.required) {
        s.push_str(&comment(k.doc));
        match k.default {
            Some(d) if is_literal(d) => s.push_str(&format!("#{}={d}\n\n", k.name)),
            Some(d) => s.push_str(&format!("# default: {d}\n#{}=\n\n", k.name)),
            None => s.push_str(&format!("#{}=\n\n", k.name)),
        }
    }
    s.push_str(&format!(
        "{rule}\n# Partners: list each in NP_PARTNERS, then set its keys with the name in\n\
         # upper case, e.g. NP_PARTNERS=vip and NP_PARTNER_VIP_FHIR_BASE=https://...\n{rule}\n\n"
    ));
    for k in PARTNER_KEYS {
        s.push_str(&comment(k.doc));
        let name = format!("NP_PARTNER_<NAME>_{}", k.name);
        match k.default {
            Some(d) if is_literal(d) => s.push_str(&format!("#{name}={d}\n\n")),
            Some(d) => s.push_str(&format!("# default: {d}\n#{name}=\n\n")),
            None if k.required => s.push_str(&format!("# required\n#{name}=\n\n")),
            None => s.push_str(&format!("#{name}=\n\n")),
        }
    }
    s.trim_end().to_string() + "\n"
}

/// A default that is a value (not a description such as "host name of …").
fn is_literal(d: &str) -> bool {
    !d.contains(char::is_whitespace)
        && !d.contains('<')
        && !d.starts_with("NP_")
        && d != "discovered"
}

fn key_doc(k: &KeySpec) -> String {
    let mut doc = k.doc.to_string();
    doc.push('.');
    match (k.required, k.default) {
        (true, _) => doc.push_str(" Required."),
        (false, Some("")) => doc.push_str(" Default: empty."),
        (false, Some(d)) => doc.push_str(&format!(" Default: {d}.")),
        (false, None) => doc.push_str(" Default: unset."),
    }
    doc
}

fn comment(text: &str) -> String {
    let mut out = String::new();
    let mut line = String::from("#");
    for word in text.split_whitespace() {
        if line.len() + 1 + word.len() > 78 && line.len() > 1 {
            out.push_str(&line);
            out.push('\n');
            line = String::from("#");
        }
        line.push(' ');
        line.push_str(word);
    }
    out.push_str(&line);
    out.push('\n');
    out
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(first) => first.to_uppercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}

/// Escapes text for roff: backslashes, hyphens as minus signs (so commands can
/// be copied), a leading `.` or `'` that would start a request; and allows a
/// line break after each comma inside a long word such as a JSON example.
fn escape(text: &str) -> String {
    let body = text
        .replace('\\', "\\e")
        .replace('-', "\\-")
        .replace(',', ",\\:");
    if body.starts_with('.') || body.starts_with('\'') {
        format!("\\&{body}")
    } else {
        body
    }
}

/// A small man(7) writer.
struct Roff {
    out: String,
}

impl Roff {
    fn new(title: &str, section: u8, manual: &str) -> Roff {
        Roff {
            out: format!(
                ".\\\" Generated by np-agent generate; do not edit.\n\
                 .TH {title} {section} \"\" \"np\\-agent {}\" \"{manual}\"\n.ad l\n.nh\n",
                escape(env!("CARGO_PKG_VERSION"))
            ),
        }
    }

    fn raw(&mut self, line: &str) {
        self.out.push_str(line);
        self.out.push('\n');
    }

    fn section(&mut self, name: &str) {
        self.raw(&format!(".SH {name}"));
    }

    fn text(&mut self, text: &str) {
        self.raw(".PP");
        self.raw(&escape(text));
    }

    fn bold_line(&mut self, text: &str) {
        self.raw(&format!(".B {}", escape(text)));
    }

    fn tagged(&mut self, tag: &str, text: &str) {
        self.raw(".TP");
        self.raw(&format!(".B {}", escape(tag)));
        self.raw(&escape(text));
    }

    fn finish(self) -> String {
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_documents_are_current() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        for (what, path) in GENERATED {
            let committed = std::fs::read_to_string(root.join(path)).unwrap_or_default();
            assert!(
                committed == generate(what).unwrap(),
                "{path} is out of date with cli::COMMANDS / config::KEYS; regenerate it with\n  \
                 cargo run --quiet -- generate {what} > {path}"
            );
        }
    }

    #[test]
    fn every_command_and_key_is_in_the_pages() {
        let (p8, p5, env) = (page_8(), page_5(), default_env_file());
        for c in COMMANDS {
            assert!(p8.contains(&escape(c.usage)), "{}", c.name);
        }
        for k in KEYS {
            assert!(p5.contains(&escape(k.name)), "{}", k.name);
            assert!(env.contains(&format!("#{}=", k.name)), "{}", k.name);
        }
        for k in PARTNER_KEYS {
            assert!(p5.contains(&escape(&format!("_{}", k.name))), "{}", k.name);
        }
        for k in required_keys() {
            assert!(
                SUGGESTED.iter().any(|(n, _)| *n == k),
                "no suggestion for {k}"
            );
        }
    }

    #[test]
    fn the_default_env_file_sets_nothing_and_parses() {
        let (vars, errors) = crate::config::envfile::parse(&default_env_file());
        assert!(errors.is_empty(), "{errors:?}");
        assert!(vars.is_empty(), "{:?}", vars.keys().collect::<Vec<_>>());
    }

    #[test]
    fn roff_escaping() {
        assert_eq!(escape("--env-file"), "\\-\\-env\\-file");
        assert_eq!(escape(".hidden"), "\\&.hidden");
        assert_eq!(escape("a\\b"), "a\\eb");
        assert_eq!(escape("a,b"), "a,\\:b");
        assert!(page_8().lines().all(|l| !l.starts_with('\'')));
    }
}
