//! The server-side Actions Framework.
//!
//! Mirrors the web-chat Actions Framework: every action, built-in or custom,
//! runs as `before` listeners (each may change the payload or reject), then
//! the action's implementation (which may be replaced), then `after`
//! listeners (which see payload and result). Custom actions are registered
//! by name, from configuration (a reference name for a preset action, like a
//! widget's API actions) or from Rust code embedding the broker.
//!
//! The registry is built before the broker starts and is immutable after, so
//! dispatch reads it with no lock. Built-in implementations are plain
//! functions: the hot path (`SendMessage` with no listeners) allocates
//! nothing for dispatch.
//!
//! One file per built-in action lives beside this one.

mod connect;
mod end_engagement;
mod get_actions;
mod get_engagements;
mod get_messages;
mod join_channel;
mod leave_channel;
mod minimize_chat;
mod restart_engagement;
mod send_message;
mod send_typing;
mod set_input_text;
mod start_engagement;
mod subscribe;
mod toggle_chat_visibility;
mod trigger_action;
mod unsubscribe;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::auth::Role;
use crate::broker::identity::Identity;
use crate::broker::session::SessionHandle;
use crate::broker::Broker;
use crate::config::{ActionsConfig, AfterListenerConfig, BeforeListenerConfig};
use crate::error::ActionError;

pub type ActionResult = Result<Value, ActionError>;
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A built-in implementation: synchronous, since built-ins only take locks.
pub type BuiltinFn = fn(&ActionContext, &Value) -> ActionResult;
type Handler = Arc<dyn Fn(ActionContext, Value) -> BoxFuture<'static, ActionResult> + Send + Sync>;
type BeforeListener =
    Arc<dyn Fn(ActionContext, Value) -> BoxFuture<'static, ActionResult> + Send + Sync>;
type AfterListener =
    Arc<dyn Fn(ActionContext, Value, Value) -> BoxFuture<'static, ()> + Send + Sync>;

/// Who is acting, and on which broker.
#[derive(Clone)]
pub struct ActionContext {
    pub broker: Arc<Broker>,
    pub identity: Arc<Identity>,
    /// The session that sent the command; `None` when the broker acts on its
    /// own (an `after` listener invoking an action as a service identity).
    pub session: Option<Arc<SessionHandle>>,
    /// Set for actions the broker runs itself rather than a client: a
    /// configured greeter may post into a channel it is not a member of.
    pub internal: bool,
}

impl ActionContext {
    /// Runs an action through the whole pipeline as this context.
    pub async fn invoke(&self, action: &str, payload: Value) -> ActionResult {
        self.broker.actions.invoke(self, action, payload).await
    }

    pub fn role(&self) -> Role {
        self.identity.role
    }

    fn session_key(&self) -> Option<u64> {
        self.session.as_ref().map(|s| s.key)
    }
}

/// `builtin` or `custom`, as `GetActions` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActionKind {
    Builtin,
    Custom,
}

impl ActionRegistry {
    /// Whether `name` is a custom action (what `TriggerAction` may run).
    pub fn is_custom(&self, name: &str) -> bool {
        self.entries
            .get(name)
            .is_some_and(|e| e.kind == ActionKind::Custom)
    }

    /// Whether `name` runs the broker's own implementation (it has not been
    /// replaced).
    pub fn runs_builtin(&self, name: &str) -> bool {
        self.entries
            .get(name)
            .is_some_and(|e| matches!(e.implementation, Implementation::Builtin(_)))
    }
}

/// Which roles may call an action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Roles {
    pub customer: bool,
    pub agent: bool,
    pub service: bool,
}

impl Roles {
    pub const ALL: Roles = Roles {
        customer: true,
        agent: true,
        service: true,
    };
    pub const CUSTOMER: Roles = Roles {
        customer: true,
        agent: false,
        service: false,
    };
    pub const STAFF: Roles = Roles {
        customer: false,
        agent: true,
        service: true,
    };

    pub fn allows(self, role: Role) -> bool {
        match role {
            Role::Customer => self.customer,
            Role::Agent => self.agent,
            Role::Service => self.service,
        }
    }
}

enum Implementation {
    Builtin(BuiltinFn),
    /// `TriggerAction`.
    Trigger,
    Handler(Handler),
    /// A configured custom action: runs `target` with the preset payload,
    /// the caller's payload merged over it.
    Preset {
        target: String,
    },
}

struct ActionEntry {
    kind: ActionKind,
    description: String,
    preset: Option<Value>,
    roles: Roles,
    implementation: Implementation,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RegistryError {
    #[error("no action named {0:?}")]
    UnknownAction(String),
    #[error("an action named {0:?} already exists")]
    Duplicate(String),
    #[error("invalid action name {0:?}")]
    InvalidName(String),
    #[error("custom action {0:?} cannot run Connect")]
    NotInvocable(String),
}

/// A custom action registered from Rust code.
pub struct CustomAction {
    pub name: String,
    pub description: String,
    pub roles: Roles,
}

impl CustomAction {
    pub fn new(name: impl Into<String>) -> Self {
        CustomAction {
            name: name.into(),
            description: String::new(),
            roles: Roles::ALL,
        }
    }

    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.description = description.into();
        self
    }

    pub fn roles(mut self, roles: Roles) -> Self {
        self.roles = roles;
        self
    }
}

/// The built-in actions, in the contract's order. `TriggerAction` has no
/// plain function: it runs other actions, so it is async (see
/// `trigger_action.rs`).
const BUILTINS: [(&str, Roles, Option<BuiltinFn>, &str); 17] = [
    (
        "Connect",
        Roles::ALL,
        Some(connect::run),
        "Start the session.",
    ),
    (
        "GetActions",
        Roles::ALL,
        Some(get_actions::run),
        "List the actions.",
    ),
    (
        "TriggerAction",
        Roles::ALL,
        None,
        "Run a custom action by its reference name.",
    ),
    (
        "StartEngagement",
        Roles::CUSTOMER,
        Some(start_engagement::run),
        "Start a chat.",
    ),
    (
        "RestartEngagement",
        Roles::CUSTOMER,
        Some(restart_engagement::run),
        "Leave the chat and return to the pre-engagement form.",
    ),
    (
        "ToggleChatVisibility",
        Roles::CUSTOMER,
        Some(toggle_chat_visibility::run),
        "Minimize or expand the chat widget.",
    ),
    (
        "MinimizeChat",
        Roles::CUSTOMER,
        Some(minimize_chat::run),
        "Minimize the chat widget.",
    ),
    (
        "SendMessage",
        Roles::ALL,
        Some(send_message::run),
        "Post a message to a channel.",
    ),
    (
        "SetInputText",
        Roles::ALL,
        Some(set_input_text::run),
        "Save the draft for a channel.",
    ),
    (
        "SendTyping",
        Roles::ALL,
        Some(send_typing::run),
        "Tell the channel you are typing.",
    ),
    (
        "JoinChannel",
        Roles::STAFF,
        Some(join_channel::run),
        "Join a channel as a member.",
    ),
    (
        "LeaveChannel",
        Roles::ALL,
        Some(leave_channel::run),
        "Leave a channel.",
    ),
    (
        "EndEngagement",
        Roles::STAFF,
        Some(end_engagement::run),
        "End a chat for everyone in it.",
    ),
    (
        "Subscribe",
        Roles::STAFF,
        Some(subscribe::run),
        "Observe a channel or queue without joining.",
    ),
    (
        "Unsubscribe",
        Roles::STAFF,
        Some(unsubscribe::run),
        "Stop observing a channel or queue.",
    ),
    (
        "GetEngagements",
        Roles::STAFF,
        Some(get_engagements::run),
        "Read a page of a queue's open engagements.",
    ),
    (
        "GetMessages",
        Roles::ALL,
        Some(get_messages::run),
        "Read a page of a channel's history.",
    ),
];

/// Every action the broker knows, with its listeners.
pub struct ActionRegistry {
    entries: HashMap<String, ActionEntry>,
    /// Names in listing order: built-ins, then custom actions as registered.
    order: Vec<String>,
    before: HashMap<String, Vec<BeforeListener>>,
    after: HashMap<String, Vec<AfterListener>>,
}

impl Default for ActionRegistry {
    fn default() -> Self {
        Self::new()
    }
}

impl ActionRegistry {
    /// The built-in actions and no listeners.
    pub fn new() -> Self {
        let mut registry = ActionRegistry {
            entries: HashMap::new(),
            order: Vec::new(),
            before: HashMap::new(),
            after: HashMap::new(),
        };
        for (name, roles, run, description) in BUILTINS {
            registry.order.push(name.to_owned());
            registry.entries.insert(
                name.to_owned(),
                ActionEntry {
                    kind: ActionKind::Builtin,
                    description: description.to_owned(),
                    preset: None,
                    roles,
                    implementation: match run {
                        Some(run) => Implementation::Builtin(run),
                        None => Implementation::Trigger,
                    },
                },
            );
        }
        registry
    }

    /// The built-in implementation of `name`, so that a replacement can
    /// still call the original.
    pub fn builtin(name: &str) -> Option<BuiltinFn> {
        BUILTINS
            .iter()
            .find(|(n, ..)| *n == name)
            .and_then(|(_, _, run, _)| *run)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// Adds a `before<Action>` listener: it gets the payload and returns the
    /// payload to use, or an error (`ActionError::Rejected`) to stop.
    pub fn before<F, Fut>(&mut self, action: &str, listener: F) -> Result<(), RegistryError>
    where
        F: Fn(ActionContext, Value) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ActionResult> + Send + 'static,
    {
        self.known(action)?;
        self.before
            .entry(action.to_owned())
            .or_default()
            .push(Arc::new(move |ctx, payload| {
                Box::pin(listener(ctx, payload))
            }));
        Ok(())
    }

    /// Adds an `after<Action>` listener: it sees payload and result once the
    /// action succeeded. It cannot change the result.
    pub fn after<F, Fut>(&mut self, action: &str, listener: F) -> Result<(), RegistryError>
    where
        F: Fn(ActionContext, Value, Value) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.known(action)?;
        self.after
            .entry(action.to_owned())
            .or_default()
            .push(Arc::new(move |ctx, payload, result| {
                Box::pin(listener(ctx, payload, result))
            }));
        Ok(())
    }

    /// Replaces an action's implementation; its roles and listeners stay.
    pub fn replace<F, Fut>(&mut self, action: &str, implementation: F) -> Result<(), RegistryError>
    where
        F: Fn(ActionContext, Value) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ActionResult> + Send + 'static,
    {
        let entry = self
            .entries
            .get_mut(action)
            .ok_or_else(|| RegistryError::UnknownAction(action.to_owned()))?;
        entry.implementation =
            Implementation::Handler(Arc::new(move |ctx, p| Box::pin(implementation(ctx, p))));
        Ok(())
    }

    /// Registers a custom action implemented in Rust.
    pub fn register<F, Fut>(
        &mut self,
        action: CustomAction,
        handler: F,
    ) -> Result<(), RegistryError>
    where
        F: Fn(ActionContext, Value) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ActionResult> + Send + 'static,
    {
        self.insert_custom(
            action.name,
            ActionEntry {
                kind: ActionKind::Custom,
                description: action.description,
                preset: None,
                roles: action.roles,
                implementation: Implementation::Handler(Arc::new(move |ctx, p| {
                    Box::pin(handler(ctx, p))
                })),
            },
        )
    }

    /// Registers a reference name for a preset action (a widget API action).
    pub fn register_preset(
        &mut self,
        name: &str,
        target: &str,
        preset: Option<Value>,
        description: Option<String>,
    ) -> Result<(), RegistryError> {
        self.known(target)?;
        if target == "Connect" {
            return Err(RegistryError::NotInvocable(name.to_owned()));
        }
        self.insert_custom(
            name.to_owned(),
            ActionEntry {
                kind: ActionKind::Custom,
                description: description.unwrap_or_else(|| format!("Runs {target}.")),
                preset: Some(preset.unwrap_or_else(|| Value::Object(Map::new()))),
                roles: Roles::ALL,
                implementation: Implementation::Preset {
                    target: target.to_owned(),
                },
            },
        )
    }

    fn insert_custom(&mut self, name: String, entry: ActionEntry) -> Result<(), RegistryError> {
        if name.is_empty() || name.len() > 64 || name.chars().any(|c| c.is_control()) {
            return Err(RegistryError::InvalidName(name));
        }
        if self.entries.contains_key(&name) {
            return Err(RegistryError::Duplicate(name));
        }
        self.order.push(name.clone());
        self.entries.insert(name, entry);
        Ok(())
    }

    fn known(&self, action: &str) -> Result<(), RegistryError> {
        if self.entries.contains_key(action) {
            Ok(())
        } else {
            Err(RegistryError::UnknownAction(action.to_owned()))
        }
    }

    /// Adds the `[actions]` section of the configuration: custom actions
    /// first, so listeners can name them.
    pub fn apply_config(&mut self, config: &ActionsConfig) -> Result<(), RegistryError> {
        for custom in &config.custom {
            self.register_preset(
                &custom.name,
                &custom.action,
                custom.payload.clone(),
                custom.description.clone(),
            )?;
        }
        for before in &config.before {
            self.add_configured_before(before)?;
        }
        for after in &config.after {
            self.add_configured_after(after)?;
        }
        Ok(())
    }

    fn add_configured_before(
        &mut self,
        config: &BeforeListenerConfig,
    ) -> Result<(), RegistryError> {
        let defaults = config.defaults.clone();
        let reject = config.reject.clone();
        self.before(&config.on, move |_ctx, payload| {
            let outcome = match (&reject, &defaults) {
                (Some(message), _) => Err(ActionError::Rejected(message.clone())),
                (None, Some(defaults)) => Ok(merge(defaults.clone(), payload)),
                (None, None) => Ok(payload),
            };
            std::future::ready(outcome)
        })
    }

    fn add_configured_after(&mut self, config: &AfterListenerConfig) -> Result<(), RegistryError> {
        self.known(&config.invoke)?;
        if config.invoke == "Connect" {
            return Err(RegistryError::NotInvocable(config.invoke.clone()));
        }
        let config = config.clone();
        self.after(&config.on.clone(), move |ctx, payload, result| {
            let config = config.clone();
            async move { run_configured_after(&config, ctx, payload, result).await }
        })
    }

    /// Runs `action` through its listeners and implementation.
    pub async fn invoke(&self, ctx: &ActionContext, action: &str, payload: Value) -> ActionResult {
        let entry = self
            .entries
            .get(action)
            .ok_or_else(|| ActionError::UnknownAction(action.to_owned()))?;
        if !entry.roles.allows(ctx.role()) {
            return Err(ActionError::Forbidden(format!(
                "{action} is not allowed for {}",
                ctx.role().with_article()
            )));
        }
        // A client's session pays for every run of a limited action, however
        // it was reached (directly, a custom action, `TriggerAction`).
        if let Some(session) = ctx.session.as_ref().filter(|_| !ctx.internal) {
            session.rate.check_action(action)?;
        }
        let mut payload = payload;
        for listener in self.before.get(action).into_iter().flatten() {
            payload = listener(ctx.clone(), payload).await?;
            if !payload.is_object() {
                return Err(ActionError::Internal(format!(
                    "a before{action} listener returned a payload that is not a map"
                )));
            }
        }
        if entry.kind == ActionKind::Builtin {
            crate::validate::payload(&ctx.broker.config, action, &payload)?;
        }
        let after = self.after.get(action);
        let result = match &entry.implementation {
            Implementation::Trigger => trigger_action::run(self, ctx, &payload).await?,
            Implementation::Builtin(run) => run(ctx, &payload)?,
            Implementation::Handler(handler) => {
                let payload = if after.is_some() {
                    payload.clone()
                } else {
                    std::mem::take(&mut payload)
                };
                handler(ctx.clone(), payload).await?
            }
            Implementation::Preset { target } => {
                let preset = entry.preset.clone().unwrap_or(Value::Null);
                let merged = merge(preset, payload.clone());
                self.invoke_boxed(ctx, target, merged).await?
            }
        };
        if let Some(listeners) = after {
            for listener in listeners {
                listener(ctx.clone(), payload.clone(), result.clone()).await;
            }
        }
        Ok(result)
    }

    /// Boxed, so that actions running actions (custom presets, listeners)
    /// can recurse.
    pub(crate) fn invoke_boxed<'a>(
        &'a self,
        ctx: &'a ActionContext,
        action: &'a str,
        payload: Value,
    ) -> BoxFuture<'a, ActionResult> {
        Box::pin(self.invoke(ctx, action, payload))
    }

    /// Names of the actions a role may call, in listing order.
    pub fn allowed_names(&self, role: Role) -> Vec<&str> {
        self.order
            .iter()
            .filter(|name| self.allowed(name, role))
            .map(String::as_str)
            .collect()
    }

    /// Whether `role` may call `name`: for a preset, whether it may call the
    /// preset's target.
    fn allowed(&self, name: &str, role: Role) -> bool {
        match self.entries.get(name) {
            Some(ActionEntry {
                implementation: Implementation::Preset { target },
                roles,
                ..
            }) => roles.allows(role) && self.allowed(target, role),
            Some(entry) => entry.roles.allows(role),
            None => false,
        }
    }

    /// `GetActions` entries: `{name, kind, description, payload?, allowed}`.
    pub fn describe(&self, role: Role) -> Vec<Value> {
        self.order
            .iter()
            .map(|name| {
                let entry = &self.entries[name];
                let mut item = Map::new();
                item.insert("name".into(), name.clone().into());
                let kind = match entry.kind {
                    ActionKind::Builtin => "builtin",
                    ActionKind::Custom => "custom",
                };
                item.insert("kind".into(), kind.into());
                item.insert("description".into(), entry.description.clone().into());
                if let Some(preset) = &entry.preset {
                    item.insert("payload".into(), preset.clone());
                }
                item.insert("allowed".into(), self.allowed(name, role).into());
                Value::Object(item)
            })
            .collect()
    }
}

/// A configured `after` listener: invoke another action, as a service
/// identity when `as` is set. `channelSid` comes from the result (or the
/// original payload) when the preset has none.
async fn run_configured_after(
    config: &AfterListenerConfig,
    ctx: ActionContext,
    payload: Value,
    result: Value,
) {
    let mut invoke_payload = config
        .payload
        .clone()
        .unwrap_or_else(|| Value::Object(Map::new()));
    if let Value::Object(map) = &mut invoke_payload {
        if !map.contains_key("channelSid") {
            let sid = result
                .get("channelSid")
                .or_else(|| payload.get("channelSid"))
                .cloned();
            if let Some(sid) = sid {
                map.insert("channelSid".into(), sid);
            }
        }
    }
    let actor = match &config.as_identity {
        Some(name) => match ctx.broker.service_identity(name) {
            Ok(identity) => ActionContext {
                broker: ctx.broker.clone(),
                identity,
                session: None,
                internal: true,
            },
            Err(e) => {
                tracing::warn!(listener = %config.on, identity = %name, error = %e, "after listener cannot act");
                return;
            }
        },
        None => ActionContext {
            internal: true,
            ..ctx
        },
    };
    if let Err(e) = actor.invoke(&config.invoke, invoke_payload).await {
        tracing::warn!(
            on = %config.on,
            invoke = %config.invoke,
            code = e.code(),
            error = %e,
            "configured after listener failed"
        );
    }
}

/// `overlay` merged over `base`: maps merge key by key (recursively), any
/// other value in `overlay` replaces the one in `base`.
pub fn merge(base: Value, overlay: Value) -> Value {
    match (base, overlay) {
        (Value::Object(mut base), Value::Object(overlay)) => {
            for (key, value) in overlay {
                let merged = match base.remove(&key) {
                    Some(existing) => merge(existing, value),
                    None => value,
                };
                base.insert(key, merged);
            }
            Value::Object(base)
        }
        (base, Value::Null) => base,
        (_, overlay) => overlay,
    }
}

// ---- payload helpers shared by the action files ----

/// A required string field.
fn required_str<'a>(payload: &'a Value, key: &str) -> Result<&'a str, ActionError> {
    match payload.get(key) {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(ActionError::bad_request(format!(
            "`{key}` must be a string"
        ))),
        None => Err(ActionError::bad_request(format!("`{key}` is required"))),
    }
}

/// The `channelSid` field, checked for shape.
fn channel_sid(payload: &Value) -> Result<&str, ActionError> {
    let sid = required_str(payload, "channelSid")?;
    if !crate::broker::channel::is_channel_sid(sid) {
        return Err(ActionError::bad_request(format!(
            "`channelSid` {sid:?} is not a channel sid (CH + 32 lowercase hex)"
        )));
    }
    Ok(sid)
}

/// The channel a member acts on. Customers get `not_a_member` for a channel
/// that does not exist too, so sids cannot be probed.
fn member_channel(
    ctx: &ActionContext,
    sid: &str,
) -> Result<Arc<crate::broker::channel::Channel>, ActionError> {
    ctx.broker.channel(sid).ok_or_else(|| match ctx.role() {
        Role::Customer => ActionError::NotAMember(sid.to_owned()),
        _ => ActionError::NotFound(format!("no channel {sid}")),
    })
}

fn session_required(ctx: &ActionContext) -> Result<&Arc<SessionHandle>, ActionError> {
    ctx.session
        .as_ref()
        .ok_or_else(|| ActionError::bad_request("this action needs a session"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_is_deep_for_maps() {
        let merged = merge(
            json!({"formData": {"department": "sales", "x": 1}, "keep": true}),
            json!({"formData": {"name": "Ada", "x": 2}}),
        );
        assert_eq!(
            merged,
            json!({"formData": {"department": "sales", "name": "Ada", "x": 2}, "keep": true})
        );
    }

    #[test]
    fn registry_refuses_duplicates_and_unknown_targets() {
        let mut r = ActionRegistry::new();
        assert_eq!(
            r.register_preset("SendMessage", "StartEngagement", None, None),
            Err(RegistryError::Duplicate("SendMessage".into()))
        );
        assert_eq!(
            r.register_preset("x", "Nope", None, None),
            Err(RegistryError::UnknownAction("Nope".into()))
        );
        assert!(r
            .register_preset("contact-sales", "StartEngagement", None, None)
            .is_ok());
        assert!(r.allowed_names(Role::Customer).contains(&"contact-sales"));
        assert!(!r.allowed_names(Role::Agent).contains(&"contact-sales"));
        assert!(r.before("Nope", |_, p| async move { Ok(p) }).is_err());
    }
}
