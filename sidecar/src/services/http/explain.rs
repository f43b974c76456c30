//! `gatehouse policy explain-url`: what the gateway would do with a URL for
//! a plugin, and why, using the same checks in the same order as a real
//! request (normalise, allowlist, zone, resolve, SSRF guard), without
//! sending anything.

use std::net::IpAddr;

use super::addr::{AddrClass, classify};
use super::policy::HttpPolicy;
use super::resolve::{Lookup, Zone, admit};
use super::url::{TargetHost, normalize};

/// The verdict and the evidence for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    /// The URL after normalisation, when it parsed.
    pub normalized: Option<String>,
    /// The allow entry that matched.
    pub rule: Option<String>,
    /// Whether the entry lets the host reach non-public addresses (an
    /// exact grant).
    pub private_granted: bool,
    /// Each resolved address, its class and whether the guard admits it;
    /// or why resolution failed. Empty when the URL never got that far.
    pub addresses: Result<Vec<ResolvedAddr>, String>,
    /// `Ok(())` when a request would be sent; otherwise the reason.
    pub verdict: Result<(), String>,
}

/// One address a host resolved to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResolvedAddr {
    /// The address.
    pub ip: IpAddr,
    /// Its class.
    pub class: AddrClass,
    /// Whether the guard would connect to it for this plugin.
    pub admitted: bool,
}

/// Explains what a request to `url` by a plugin with `policy` would meet.
/// `policy` is `None` for a plugin without an `[http]` section.
pub async fn explain(policy: Option<&HttpPolicy>, url: &str, lookup: &dyn Lookup) -> Explanation {
    let mut explanation = Explanation {
        normalized: None,
        rule: None,
        private_granted: false,
        addresses: Ok(Vec::new()),
        verdict: Ok(()),
    };
    let target = match normalize(url) {
        Ok(target) => target,
        Err(e) => {
            explanation.verdict = Err(e.to_string());
            return explanation;
        }
    };
    explanation.normalized = Some(target.url.to_string());
    let Some(policy) = policy else {
        explanation.verdict = Err("the plugin's policy has no [http] section".into());
        return explanation;
    };
    match policy.check_target(&target) {
        Ok(rule) => explanation.rule = Some(rule.text.clone()),
        Err(denial) => explanation.verdict = Err(denial.0),
    }
    explanation.private_granted = explanation.rule.is_some() && policy.grants_private(&target.host);
    let zone = if explanation.private_granted { Zone::Granted } else { Zone::Public };

    let resolved = match &target.host {
        TargetHost::Ip(ip) => Ok(vec![*ip]),
        TargetHost::Domain(name) => lookup.lookup(name).await.map_err(|e| format!("cannot resolve {name}: {e}")),
    };
    explanation.addresses = resolved.map(|ips| {
        ips.iter()
            .map(|&ip| {
                let class = classify(ip);
                ResolvedAddr { ip, class, admitted: zone.admits(class) }
            })
            .collect()
    });
    if explanation.verdict.is_ok()
        && let Ok(addrs) = &explanation.addresses
        && let (admitted, refused) = admit(zone, &addrs.iter().map(|a| a.ip).collect::<Vec<_>>())
        && admitted.is_empty()
        && !refused.is_empty()
    {
        let why = if zone == Zone::Granted {
            "it resolves only to unspecified, multicast or broadcast addresses, which are never allowed"
        } else {
            "it resolves only to non-public addresses, and only an exact allow entry (no wildcard) for this host can open those"
        };
        explanation.verdict = Err(format!("{} is refused by the SSRF guard: {why}", target.host));
    }
    explanation
}
