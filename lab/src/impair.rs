//! `meshnet-lab impair POD:INTF …`: the declaration a user's flags stand for, checked before it is
//! stored (the daemons apply it: the wire on gRPC links, netem/tbf on kernel links).

use meshnet_topology::impairment::{Impairment, Percent};

/// The flags of `impair`, as typed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImpairFlags {
    pub delay: Option<String>,
    pub jitter: Option<String>,
    pub loss: Option<String>,
    pub rate: Option<String>,
    pub duplicate: Option<String>,
    pub corrupt: Option<String>,
    pub reorder: Option<String>,
    pub side: Option<String>,
    pub clear: bool,
}

/// `1%`, `1`, `0.5 %` → 1.0, 1.0, 0.5.
fn percent(name: &str, s: &str) -> Result<Percent, String> {
    let t = s.trim().trim_end_matches('%').trim();
    t.parse::<f64>()
        .map(Percent)
        .map_err(|_| format!("--{name} {s:?}: want a percentage such as 1% or 0.5"))
}

/// The declaration to store: `None` clears it.
///
/// # Errors
/// No flag given, `--clear` with other flags, or a value the daemons would refuse (named).
pub fn declaration(f: &ImpairFlags) -> Result<Option<Impairment>, String> {
    let any = [
        &f.delay,
        &f.jitter,
        &f.loss,
        &f.rate,
        &f.duplicate,
        &f.corrupt,
        &f.reorder,
    ]
    .iter()
    .any(|o| o.is_some());
    if f.clear {
        return if any || f.side.is_some() {
            Err("--clear removes the impairment: give no other flag with it".into())
        } else {
            Ok(None)
        };
    }
    if !any {
        return Err(
            "nothing to impair: give --delay, --jitter, --loss, --rate, --duplicate, --corrupt or --reorder (or --clear)"
                .into(),
        );
    }
    let pct = |name: &str, v: &Option<String>| v.as_deref().map(|s| percent(name, s)).transpose();
    let i = Impairment {
        delay: f.delay.clone().unwrap_or_default(),
        jitter: f.jitter.clone().unwrap_or_default(),
        loss: pct("loss", &f.loss)?,
        rate: f.rate.clone().unwrap_or_default(),
        duplicate: pct("duplicate", &f.duplicate)?,
        corrupt: pct("corrupt", &f.corrupt)?,
        reorder: pct("reorder", &f.reorder)?,
        side: f.side.clone().unwrap_or_default(),
    };
    i.parse()?;
    Ok(Some(i))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_become_a_checked_declaration() {
        let f = ImpairFlags {
            delay: Some("10ms".into()),
            loss: Some("1%".into()),
            side: Some("local".into()),
            ..ImpairFlags::default()
        };
        let i = declaration(&f).expect("valid").expect("some");
        assert_eq!(i.delay, "10ms");
        assert_eq!(i.loss, Some(Percent(1.0)));
        assert_eq!(i.side, "local");
        assert_eq!(
            declaration(&ImpairFlags {
                loss: Some("0.5".into()),
                ..ImpairFlags::default()
            })
            .expect("valid")
            .and_then(|i| i.loss),
            Some(Percent(0.5))
        );
    }

    #[test]
    fn clear_and_mistakes() {
        let clear = ImpairFlags {
            clear: true,
            ..ImpairFlags::default()
        };
        assert_eq!(declaration(&clear), Ok(None));
        let both = ImpairFlags {
            delay: Some("1ms".into()),
            ..clear
        };
        assert!(declaration(&both).expect_err("both").contains("--clear"));
        assert!(
            declaration(&ImpairFlags::default())
                .expect_err("none")
                .contains("--delay")
        );
        for (f, want) in [
            (
                ImpairFlags {
                    loss: Some("lots".into()),
                    ..ImpairFlags::default()
                },
                "--loss \"lots\"",
            ),
            (
                ImpairFlags {
                    loss: Some("120%".into()),
                    ..ImpairFlags::default()
                },
                "loss 120",
            ),
            (
                ImpairFlags {
                    rate: Some("50mbps".into()),
                    ..ImpairFlags::default()
                },
                "want a rate such as 100mbit",
            ),
        ] {
            let e = declaration(&f).expect_err(want);
            assert!(e.contains(want), "{e}");
        }
    }
}
