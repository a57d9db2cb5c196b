//! Local API requests the node loop answers (or hands to the coordinator or the store).

use super::*;

impl Node {
    pub(super) fn handle_api(&mut self, r: ApiRequest) {
        match r.command {
            ref c if c.is_storage() => {
                match self.storage.clone() {
                    // Metadata commits fsync: keep them off the node loop.
                    Some(st) => {
                        let co = match self.mesh.as_ref().map(|m| &m.role) {
                            Some(Role::Coordinator(c)) => Some(c.clone()),
                            _ => None,
                        };
                        tokio::task::spawn_blocking(move || {
                            let resp = match &co {
                                // Bucket and share changes are replicated control state.
                                Some(c) => st.handle_replicated(
                                    c,
                                    &r.command,
                                    &crate::identity::LOCAL_ROOT.to_string(),
                                ),
                                None => st.handle(&r.command),
                            };
                            let _ = r.reply.send(resp);
                        });
                    }
                    None => {
                        // A member uses the coordinator's store with the keys issued at join, and
                        // forwards bucket and share commands to it (authorised there).
                        let saved = self.mesh.as_ref().and_then(|m| m.saved.as_ref());
                        let client = match self.mesh.as_ref().map(|m| &m.role) {
                            Some(Role::Member { client, .. }) => Some(client.current()),
                            _ => None,
                        };
                        let resp = match (&r.command, saved, client) {
                        (Command::S3Credentials, Some(j), _) => Response::ok(&tm_api::S3Credentials {
                            access_key: j.s3_access_key.clone(),
                            secret_key: j.s3_secret.clone(),
                            endpoint: "http://coordinator.mesh:8080/s3".into(),
                        }),
                        (c, _, Some(client)) if crate::policy::forwarded_needs(c).is_some() => {
                            tokio::spawn(async move {
                                let resp = crate::policy::forward_admin(&client, &r.command).await;
                                let _ = r.reply.send(resp);
                            });
                            return;
                        }
                        _ => Response::err(
                            "this node has no object store (add an `s3:` section to its config)",
                        ),
                    };
                        let _ = r.reply.send(resp);
                    }
                }
            }
            Command::Leave => self.leave(r),
            Command::Ping { .. } => self.ping(r),
            Command::FilterLoad { .. }
            | Command::FilterLog { .. }
            | Command::FilterClear
            | Command::FilterShow
            | Command::FilterTest { .. } => {
                let resp = self.filter_api(&r.command);
                let _ = r.reply.send(resp);
            }
            ref c if c.is_admin() => match self.mesh.as_ref().map(|m| &m.role) {
                Some(Role::Coordinator(co)) => {
                    let (co, st) = (co.clone(), self.storage.clone());
                    tokio::task::spawn_blocking(move || {
                        let resp = crate::identity::handle(&co, st.as_ref(), &r.command);
                        let _ = r.reply.send(resp);
                    });
                }
                Some(Role::Member { client, .. }) => {
                    let client = client.current();
                    tokio::spawn(async move {
                        let resp = crate::policy::forward_admin(&client, &r.command).await;
                        let _ = r.reply.send(resp);
                    });
                }
                None => {
                    let _ = r.reply.send(Response::err(
                        "admin commands need a mesh: this node is not in one",
                    ));
                }
            },
            Command::Status | Command::Peers if self.dp.is_some() => {
                // Answer once fresh counters arrive (or after a short wait).
                self.send(CtlMsg::RequestCounters);
                self.waiting.push((Instant::now() + COUNTER_WAIT, r));
            }
            _ => {
                let resp = self.respond(&r.command);
                let _ = r.reply.send(resp);
            }
        }
    }

    pub(super) fn leave(&mut self, r: ApiRequest) {
        let client = match self.mesh.as_ref().map(|m| &m.role) {
            Some(Role::Member { client, .. }) => client.current(),
            Some(Role::Coordinator(_)) => {
                let _ = r.reply.send(Response::err(
                    "a coordinator cannot leave its own mesh (stop it instead)",
                ));
                return;
            }
            None => {
                let _ = r.reply.send(Response::err("this node is not in a mesh"));
                return;
            }
        };
        if self.leaving.is_some() {
            let _ = r.reply.send(Response::err("already leaving"));
            return;
        }
        let (tx, rx) = oneshot::channel();
        tokio::spawn(async move {
            let _ = tx.send(client.leave().await.map_err(|e| e.to_string()));
        });
        self.leaving = Some((rx, r));
    }

    pub(super) fn answer_waiting(&mut self, all: bool) {
        let now = Instant::now();
        let mut i = 0;
        while i < self.waiting.len() {
            if all || self.waiting[i].0 <= now {
                let (_, r) = self.waiting.swap_remove(i);
                let resp = self.respond(&r.command);
                let _ = r.reply.send(resp);
            } else {
                i += 1;
            }
        }
    }

    pub(super) fn respond(&self, c: &Command) -> Response {
        match c {
            Command::Status => Response::ok(&self.status()),
            Command::Peers => Response::ok(&self.peer_infos()),
            Command::Token => match self.mesh.as_ref().map(|m| &m.role) {
                Some(Role::Coordinator(c)) => Response::ok(&c.token()),
                _ => Response::err("this node is not a coordinator (run `tmctl token` on one)"),
            },
            #[allow(unreachable_patterns)]
            _ => Response::err("this node does not support that command"),
        }
    }
}
