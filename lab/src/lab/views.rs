//! The lab's view of links: both ends' declarations and statuses combined into one line per link
//! (what `status`, `up`'s wait and `verify` read). Pure.

use super::*;

/// One end of a link in the lab's view.
#[derive(Debug, Clone, Serialize)]
pub struct EndView {
    pub pod: String,
    pub interface: String,
    pub ip: String,
    pub state: String,
}

/// A link as `status` reports it.
#[derive(Debug, Clone, Serialize)]
pub struct LinkView {
    pub uid: i64,
    pub namespace: String,
    pub a: EndView,
    pub b: EndView,
    pub kind: String,
    pub state: String,
    pub message: String,
    /// Both ends are lab pods (or the peer is the node, for macvlan): `up` waits for it.
    #[serde(skip)]
    pub required: bool,
}

impl LinkView {
    pub(super) fn involves(&self, k: &PodKey) -> bool {
        self.namespace == k.namespace && (self.a.pod == k.name || self.b.pod == k.name)
    }
    pub(super) fn label(&self) -> String {
        format!(
            "{}/uid {}: {}:{} <-> {}:{}",
            self.namespace, self.uid, self.a.pod, self.a.interface, self.b.pod, self.b.interface
        )
    }
}

pub(super) fn describe(links: &[&LinkView]) -> String {
    links
        .iter()
        .map(|l| format!("  {} [{}] {}", l.label(), l.state, l.message))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Combines both ends' statuses into one view per link `(namespace, uid)`.
///
/// A uid names one link between two pods: a declaration by any other pod (a third declarer, or
/// a second pair that picked the same uid) is never dropped — the link's view becomes an `error`
/// naming those pods, whatever the ends' statuses say, and `up` waits for it if one of them runs.
pub fn link_views(st: &LabState, topos: &[Topology]) -> Vec<LinkView> {
    let running: HashMap<PodKey, &PodState> = st.pods.iter().map(|p| (p.key(), p)).collect();
    let mut out: BTreeMap<(String, i64), LinkView> = BTreeMap::new();
    // Declarers of a view's uid that are not its two ends.
    let mut extra: BTreeMap<(String, i64), Vec<String>> = BTreeMap::new();
    for t in topos {
        let key = t.key();
        let Some(pod) = running.get(&key) else {
            continue;
        };
        let current = t.status.container_id == pod.container_id;
        for l in &t.spec.links {
            let s = t.status.links.iter().find(|s| s.uid == l.uid && current);
            let state = s.map_or("pending".to_string(), |s| s.state.to_string());
            let end = EndView {
                pod: key.name.clone(),
                interface: l.local_intf.clone(),
                ip: l.local_ip.clone(),
                state: state.clone(),
            };
            let k = (key.namespace.clone(), l.uid);
            let peer_key = PodKey::new(&key.namespace, &l.peer_pod);
            let peer_running = l.peer_pod == LOCALHOST || running.contains_key(&peer_key);
            match out.get_mut(&k) {
                Some(v) if v.b.pod == key.name => {
                    // The peer's own declaration wins; fall back to what the first end said.
                    let ip = if end.ip.is_empty() {
                        v.b.ip.clone()
                    } else {
                        end.ip.clone()
                    };
                    if v.a.ip.is_empty() {
                        v.a.ip = l.peer_ip.clone();
                    }
                    v.b = EndView { ip, ..end };
                    merge_state(v, s.map(|s| (&s.kind, s.state, &s.message)));
                }
                // A pod declaring the uid twice is its own error, which its status reports.
                Some(v) if v.a.pod == key.name => {}
                Some(v) => {
                    if running.contains_key(&key) {
                        v.required = true;
                    }
                    extra.entry(k).or_default().push(key.name.clone());
                }
                None => {
                    let (kind, message) = s.map_or((String::new(), String::new()), |s| {
                        (s.kind.clone(), s.message.clone())
                    });
                    let localhost = l.peer_pod == LOCALHOST;
                    out.insert(
                        k,
                        LinkView {
                            uid: l.uid,
                            namespace: key.namespace.clone(),
                            a: end,
                            b: EndView {
                                pod: l.peer_pod.clone(),
                                interface: l.peer_intf.clone(),
                                ip: l.peer_ip.clone(),
                                state: if localhost {
                                    "up".into()
                                } else {
                                    "pending".into()
                                },
                            },
                            kind,
                            state: String::new(),
                            message,
                            required: peer_running,
                        },
                    );
                }
            }
        }
    }
    // A link is up when both ends say so.
    for (k, v) in &mut out {
        if let Some(pods) = extra.get(k) {
            v.state = "error".into();
            v.message = format!(
                "uid {} is also declared by {} (besides {} and {}): a uid names one link between two pods",
                v.uid,
                pods.join(", "),
                v.a.pod,
                v.b.pod
            );
        } else if v.a.state == "error" || v.b.state == "error" {
            v.state = "error".into();
        } else if v.a.state == "up" && v.b.state == "up" {
            v.state = "up".into();
        } else if ["up", "down"].contains(&v.a.state.as_str())
            && ["up", "down"].contains(&v.b.state.as_str())
        {
            // Built, and its cable pulled by a declared `state: down`.
            v.state = "down".into();
        } else {
            v.state = "pending".into();
        }
    }
    out.into_values().collect()
}

pub(super) fn merge_state(v: &mut LinkView, s: Option<(&String, LinkState, &String)>) {
    if let Some((kind, state, message)) = s {
        if v.kind.is_empty() {
            v.kind = kind.clone();
        }
        if state != LinkState::Up && !message.is_empty() && v.message.is_empty() {
            v.message = message.clone();
        }
    }
}

#[cfg(test)]
mod tests {
    use meshnet_topology::topology::{Link, LinkStatus, TopologyStatus};

    use super::*;

    fn pod(name: &str, container: &str) -> PodState {
        PodState {
            namespace: "default".into(),
            name: name.into(),
            node: "node1".into(),
            netns: format!("mnl-t-default-{name}-1"),
            container_id: container.into(),
            generation: 1,
            result: None,
        }
    }

    fn lab(pods: Vec<PodState>) -> LabState {
        LabState::for_tests(pods)
    }

    /// Topology of `name` with links `(uid, peer, ip)`, its status written by sandbox
    /// `container` with the given states.
    fn topo(
        name: &str,
        links: &[(i64, &str, &str)],
        container: &str,
        states: &[(i64, LinkState, &str)],
    ) -> Topology {
        let mut t = Topology::new(
            "default",
            name,
            links
                .iter()
                .map(|&(uid, peer, ip)| Link {
                    uid,
                    peer_pod: peer.into(),
                    local_intf: format!("eth{uid}"),
                    peer_intf: format!("eth{uid}"),
                    local_ip: ip.into(),
                    ..Default::default()
                })
                .collect(),
        );
        t.status = TopologyStatus {
            container_id: container.into(),
            links: states
                .iter()
                .map(|&(uid, state, message)| LinkStatus {
                    uid,
                    state,
                    kind: "veth".into(),
                    message: message.into(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        t
    }

    fn one(views: &[LinkView], uid: i64) -> &LinkView {
        let v: Vec<_> = views.iter().filter(|v| v.uid == uid).collect();
        assert_eq!(v.len(), 1, "one view of uid {uid}: {views:?}");
        v[0]
    }

    #[test]
    fn a_link_is_up_only_when_both_ends_say_so() {
        let st = lab(vec![pod("r1", "c1"), pod("r2", "c2")]);
        let up = LinkState::Up;
        let topos = [
            topo(
                "r1",
                &[(1, "r2", "192.0.2.1/31"), (2, "r2", "")],
                "c1",
                &[(1, up, ""), (2, up, "")],
            ),
            topo(
                "r2",
                &[(1, "r1", "192.0.2.0/31"), (2, "r1", "")],
                "c2",
                &[
                    (1, up, ""),
                    (2, LinkState::Pending, "waiting for the peer's half"),
                ],
            ),
        ];
        let views = link_views(&st, &topos);
        assert_eq!(views.len(), 2);
        let v = one(&views, 1);
        assert_eq!((v.state.as_str(), v.kind.as_str()), ("up", "veth"));
        assert_eq!(
            (v.a.ip.as_str(), v.b.ip.as_str()),
            ("192.0.2.1/31", "192.0.2.0/31")
        );
        let v = one(&views, 2);
        assert_eq!(v.state, "pending");
        assert_eq!(v.message, "waiting for the peer's half");
        assert!(v.required);
    }

    #[test]
    fn a_status_written_for_an_older_sandbox_counts_as_pending() {
        let st = lab(vec![pod("r1", "c1-new"), pod("r2", "c2")]);
        let up = LinkState::Up;
        let topos = [
            topo("r1", &[(1, "r2", "")], "c1-old", &[(1, up, "")]),
            topo("r2", &[(1, "r1", "")], "c2", &[(1, up, "")]),
        ];
        let v = link_views(&st, &topos);
        assert_eq!(one(&v, 1).a.state, "pending");
        assert_eq!(one(&v, 1).state, "pending");
    }

    #[test]
    fn error_wins_and_a_pulled_cable_is_down() {
        let st = lab(vec![pod("r1", "c1"), pod("r2", "c2")]);
        let (up, down) = (LinkState::Up, LinkState::Down);
        let topos = [
            topo(
                "r1",
                &[(1, "r2", ""), (2, "r2", "")],
                "c1",
                &[(1, LinkState::Error, "boom"), (2, down, "")],
            ),
            topo(
                "r2",
                &[(1, "r1", ""), (2, "r1", "")],
                "c2",
                &[(1, up, ""), (2, up, "")],
            ),
        ];
        let v = link_views(&st, &topos);
        assert_eq!(
            (one(&v, 1).state.as_str(), one(&v, 1).message.as_str()),
            ("error", "boom")
        );
        assert_eq!(one(&v, 2).state, "down");
    }

    #[test]
    fn a_third_declarer_of_a_uid_makes_the_link_an_error_naming_it() {
        let st = lab(vec![pod("r1", "c1"), pod("r2", "c2"), pod("r3", "c3")]);
        let up = LinkState::Up;
        let topos = [
            topo("r1", &[(7, "r2", "")], "c1", &[(7, up, "")]),
            topo("r2", &[(7, "r1", "")], "c2", &[(7, up, "")]),
            topo("r3", &[(7, "r1", "")], "c3", &[(7, up, "")]),
        ];
        let views = link_views(&st, &topos);
        let v = one(&views, 7);
        assert_eq!(v.state, "error");
        assert!(v.message.contains("also declared by r3"), "{}", v.message);
    }

    #[test]
    fn a_peer_that_does_not_run_is_not_waited_for_and_localhost_needs_no_peer() {
        let st = lab(vec![pod("r1", "c1")]);
        let up = LinkState::Up;
        let topos = [topo(
            "r1",
            &[(1, "ghost", ""), (2, LOCALHOST, "192.0.2.10/24")],
            "c1",
            &[
                (1, LinkState::Pending, "waiting for peer pod default/ghost"),
                (2, up, ""),
            ],
        )];
        let views = link_views(&st, &topos);
        let v = one(&views, 1);
        assert_eq!(v.state, "pending");
        assert!(!v.required, "nothing in the lab will ever bring it up");
        let v = one(&views, 2);
        assert_eq!((v.state.as_str(), v.b.state.as_str()), ("up", "up"));
        assert!(v.required);
    }

    #[test]
    fn topologies_of_pods_the_lab_does_not_run_are_not_shown() {
        let st = lab(vec![pod("r1", "c1")]);
        let topos = [topo("r9", &[(1, "r1", "")], "c9", &[])];
        assert!(link_views(&st, &topos).is_empty());
    }
}
