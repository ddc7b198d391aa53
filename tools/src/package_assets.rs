//! `xnlb-package-assets DIR`: what the package carries besides the binary, generated from the
//! sources so they never drift: the man pages `xnlb(8)` and one per verb (from the CLI's
//! clap definition), `xnlb.yaml(5)` (from `docs/config.md`), and bash, zsh and fish
//! completions. `cargo xtask package` runs it.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use clap::CommandFactory;
use clap_complete::Shell;
use xnlb::cli::Cli;

/// The config reference, the source of `xnlb.yaml(5)`.
const CONFIG_REFERENCE: &str = include_str!("../../docs/config.md");

fn main() -> Result<()> {
    let out = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .context("usage: xnlb-package-assets OUT_DIR")?;
    let man = out.join("man");
    let completions = out.join("completions");
    fs::create_dir_all(&man)?;
    fs::create_dir_all(&completions)?;
    write_cli_pages(&man)?;
    fs::write(man.join("xnlb.yaml.5"), config_page(CONFIG_REFERENCE))?;
    let mut cli = Cli::command();
    for (shell, file) in [
        (Shell::Bash, "xnlb"),
        (Shell::Zsh, "_xnlb"),
        (Shell::Fish, "xnlb.fish"),
    ] {
        let mut text = Vec::new();
        clap_complete::generate(shell, &mut cli, "xnlb", &mut text);
        fs::write(completions.join(file), text)?;
    }
    println!("man pages and completions in {}", out.display());
    Ok(())
}

/// `xnlb.8`, and `xnlb-VERB.8` for each verb (`xnlb-cluster-query.8` for nested ones), as
/// git names its pages.
fn write_cli_pages(dir: &Path) -> Result<()> {
    fn write(cmd: clap::Command, name: String, dir: &Path) -> Result<()> {
        let cmd = cmd.name(name.clone());
        let mut page = Vec::new();
        clap_mangen::Man::new(cmd.clone())
            .section("8")
            .manual("xnlb")
            .render(&mut page)?;
        fs::write(dir.join(format!("{name}.8")), page)?;
        for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
            write(sub.clone(), format!("{name}-{}", sub.get_name()), dir)?;
        }
        Ok(())
    }
    let mut cli = Cli::command();
    cli.build();
    write(cli, "xnlb".into(), dir)
}

/// `docs/config.md` as a man page: headings become sections, table rows tagged paragraphs
/// (key, then type and default, then what it does), code blocks stay verbatim; links keep
/// their text.
fn config_page(markdown: &str) -> String {
    let mut page = String::from(
        ".TH XNLB.YAML 5 \"\" \"xnlb\" \"xnlb\"\n.SH NAME\nxnlb.yaml \\- the xnlb config file\n",
    );
    let mut in_code = false;
    for line in markdown.lines() {
        if line.starts_with("```") {
            page.push_str(if in_code {
                ".fi\n.RE\n"
            } else {
                ".RS 4\n.nf\n"
            });
            in_code = !in_code;
        } else if in_code {
            text_line(&mut page, &escape(line));
        } else if let Some(title) = line.strip_prefix("# ") {
            page.push_str(&format!(".SH DESCRIPTION\n.\\\" {}\n", escape(title)));
        } else if let Some(title) = line.strip_prefix("## ") {
            page.push_str(&format!(".SH {}\n", inline(title).to_uppercase()));
        } else if let Some(title) = line.strip_prefix("### ") {
            page.push_str(&format!(".SS {}\n", inline(title)));
        } else if let Some(row) = line.strip_prefix('|') {
            // Cells split on the pipes markdown does not escape (`\|` is one inside a cell).
            let row = row.replace("\\|", "\u{0}");
            let cells: Vec<String> = row
                .trim_end_matches('|')
                .split('|')
                .map(|c| c.trim().replace('\u{0}', "|"))
                .collect();
            let header = cells
                .first()
                .is_some_and(|c| c == "key" || c.starts_with("---"));
            if let [key, kind, default, what] = &cells[..]
                && !header
            {
                let default = match default.as_str() {
                    "required" => "required".to_string(),
                    "none" => "optional".to_string(),
                    other => format!("default {}", inline(other)),
                };
                page.push_str(".TP\n");
                text_line(&mut page, &inline(key));
                text_line(&mut page, &format!("{}; {default}", inline(kind)));
                page.push_str(".br\n");
                text_line(&mut page, &inline(what));
            }
        } else if line.trim().is_empty() {
            page.push_str(".PP\n");
        } else {
            text_line(&mut page, &inline(line));
        }
    }
    page.push_str(".SH SEE ALSO\n\\fBxnlb\\fR(8)\n");
    page
}

/// Markdown inline text as roff: `code` in bold, links as their text.
fn inline(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(open) = rest.find(['`', '[']) {
        out.push_str(&escape(&rest[..open]));
        let after = &rest[open + 1..];
        if rest.as_bytes()[open] == b'`' {
            let end = after.find('`').unwrap_or(after.len());
            out.push_str(&format!("\\fB{}\\fR", escape(&after[..end])));
            rest = after.get(end + 1..).unwrap_or("");
        } else if let Some(close) = after.find("](")
            && let Some(end) = after[close..].find(')')
        {
            out.push_str(&inline(&after[..close]));
            rest = &after[close + end + 1..];
        } else {
            out.push('[');
            rest = after;
        }
    }
    out.push_str(&escape(rest));
    out
}

/// Roff's special characters in text: backslashes, and hyphens meant as minus signs.
fn escape(text: &str) -> String {
    text.replace('\\', "\\e").replace('-', "\\-")
}

/// A line of text; one opening with a dot or a quote would be read as a request.
fn text_line(page: &mut String, text: &str) {
    if text.starts_with(['.', '\'']) {
        page.push_str("\\&");
    }
    page.push_str(text);
    page.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_reference_reads_as_a_man_page() {
        let page = config_page(
            "# The config file\n\nSee [cli.md](cli.md) and `xnlb check`.\n\n## Top level\n\n\
             | key | type | default | what it does |\n|---|---|---|---|\n\
             | `mode` | `two-arm` \\| `one-arm` | `two-arm` | How. |\n\n```yaml\n.x: 1\n```\n",
        );
        assert!(
            page.contains("See cli.md and \\fBxnlb check\\fR.\n"),
            "{page}"
        );
        assert!(page.contains(".SH TOP LEVEL\n"), "{page}");
        assert!(
            page.contains(
                ".TP\n\\fBmode\\fR\n\\fBtwo\\-arm\\fR | \\fBone\\-arm\\fR; default \\fBtwo\\-arm\\fR\n.br\nHow.\n"
            ),
            "{page}"
        );
        assert!(!page.contains("key"), "header rows are not entries: {page}");
        assert!(page.contains(".RS 4\n.nf\n\\&.x: 1\n.fi\n.RE\n"), "{page}");
    }
}
