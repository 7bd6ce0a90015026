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
//! dispatch reads it with no lock. A built-in is a plain function that
//! decodes its typed payload, asks the engine for the change (which decides
//! and orders it at once) and returns the result to come once the change is
//! durable (`Pending`); `BUILTINS` is the one list of them and of their
//! properties. One file per built-in action lives beside this one.

mod connect;
pub(crate) use connect::check_tokens;
pub(crate) mod end_engagement;
mod get_actions;
mod get_engagements;
pub(crate) mod get_messages;
mod join_channel;
mod leave_channel;
mod minimize_chat;
pub(crate) mod payload;
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
use crate::config::{ActionsConfig, AfterListenerConfig, BeforeListenerConfig};
use crate::delivery::session::SessionHandle;
use crate::engine::{Actor, Pending};
use crate::error::ActionError;
use crate::node::Node;

pub type ActionResult = Result<Value, ActionError>;
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A built-in implementation: decodes, asks the engine, and returns the
/// result to come once the change is durable. Synchronous up to that
/// point, so a session can pipeline it (the change's place in its channel's
/// order is decided when this returns).
pub(crate) type BuiltinFn = fn(&ActionContext, Value) -> Result<Pending<Value>, ActionError>;
type Handler = Arc<dyn Fn(ActionContext, Value) -> BoxFuture<'static, ActionResult> + Send + Sync>;
type BeforeListener =
    Arc<dyn Fn(ActionContext, Value) -> BoxFuture<'static, ActionResult> + Send + Sync>;
type AfterListener =
    Arc<dyn Fn(ActionContext, Value, Value) -> BoxFuture<'static, ()> + Send + Sync>;

/// Who is acting, and on which broker.
#[derive(Clone)]
pub struct ActionContext {
    pub(crate) node: Arc<Node>,
    pub(crate) actions: Arc<ActionRegistry>,
    pub(crate) actor: Actor,
    /// The session that sent the command; `None` when the broker acts on its
    /// own (an `after` listener invoking an action as a service identity).
    pub(crate) session: Option<Arc<SessionHandle>>,
    /// Set for actions the broker runs itself rather than a client: a
    /// configured greeter may post into a channel it is not a member of.
    pub(crate) internal: bool,
}

impl ActionContext {
    /// Runs an action through the whole pipeline as this context.
    pub async fn invoke(&self, action: &str, payload: Value) -> ActionResult {
        self.actions.clone().invoke(self, action, payload).await
    }

    /// The acting identity.
    pub fn identity(&self) -> &str {
        &self.actor.id
    }

    pub fn role(&self) -> Role {
        self.actor.role
    }

    /// The `sessionId` of the session that sent the command, if one did.
    pub fn session_id(&self) -> Option<&str> {
        self.session.as_ref().map(|s| s.id.as_str())
    }

    /// Whether every write the broker has accepted so far is durable (a
    /// replacement that reads what others wrote may want to know).
    pub fn all_writes_durable(&self) -> bool {
        self.node.engine.all_durable()
    }

    fn session_key(&self) -> Option<u64> {
        self.session.as_ref().map(|s| s.key)
    }

    /// The same identity acting as the broker (for configured listeners).
    fn internal(&self) -> ActionContext {
        ActionContext {
            internal: true,
            ..self.clone()
        }
    }
}

/// `builtin` or `custom`, as `GetActions` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActionKind {
    Builtin,
    Custom,
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
    /// See [`Builtin::pipelined`]; always false for custom actions.
    pipelined: bool,
    implementation: Implementation,
}

/// A built-in's original implementation (see [`ActionRegistry::builtin`]).
#[derive(Clone, Copy)]
pub struct BuiltinAction {
    run: BuiltinFn,
}

impl BuiltinAction {
    /// Runs it (no listeners: the caller is inside the pipeline already).
    pub async fn call(&self, ctx: &ActionContext, payload: Value) -> ActionResult {
        Ok((self.run)(ctx, payload)?.await?)
    }
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

/// A built-in action and its properties: the only list of them. The
/// session's pipelining, payload checks (each action's `run` decodes its
/// typed payload) and `GetActions` all come from here.
pub(crate) struct Builtin {
    pub name: &'static str,
    pub roles: Roles,
    /// May run while the session's earlier replies wait for durability
    /// (when not replaced and without listeners): its effects are decided
    /// when it runs, and it reads nothing only durability makes visible.
    pub pipelined: bool,
    pub description: &'static str,
    /// `None` for `TriggerAction`, which runs other actions (async).
    pub run: Option<BuiltinFn>,
}

/// The built-in actions, in the contract's order.
pub(crate) const BUILTINS: [Builtin; 17] = [
    builtin(
        "Connect",
        Roles::ALL,
        false,
        connect::run,
        "Start the session.",
    ),
    builtin(
        "GetActions",
        Roles::ALL,
        false,
        get_actions::run,
        "List the actions.",
    ),
    Builtin {
        name: "TriggerAction",
        roles: Roles::ALL,
        pipelined: false,
        description: "Run a custom action by its reference name.",
        run: None,
    },
    builtin(
        "StartEngagement",
        Roles::CUSTOMER,
        false,
        start_engagement::run,
        "Start a chat.",
    ),
    builtin(
        "RestartEngagement",
        Roles::CUSTOMER,
        false,
        restart_engagement::run,
        "Leave the chat and return to the pre-engagement form.",
    ),
    builtin(
        "ToggleChatVisibility",
        Roles::CUSTOMER,
        false,
        toggle_chat_visibility::run,
        "Minimize or expand the chat widget.",
    ),
    builtin(
        "MinimizeChat",
        Roles::CUSTOMER,
        false,
        minimize_chat::run,
        "Minimize the chat widget.",
    ),
    builtin(
        "SendMessage",
        Roles::ALL,
        true,
        send_message::run,
        "Post a message to a channel.",
    ),
    builtin(
        "SetInputText",
        Roles::ALL,
        true,
        set_input_text::run,
        "Save the draft for a channel.",
    ),
    builtin(
        "SendTyping",
        Roles::ALL,
        true,
        send_typing::run,
        "Tell the channel you are typing.",
    ),
    builtin(
        "JoinChannel",
        Roles::STAFF,
        false,
        join_channel::run,
        "Join a channel as a member.",
    ),
    builtin(
        "LeaveChannel",
        Roles::ALL,
        false,
        leave_channel::run,
        "Leave a channel.",
    ),
    builtin(
        "EndEngagement",
        Roles::STAFF,
        false,
        end_engagement::run,
        "End a chat for everyone in it.",
    ),
    builtin(
        "Subscribe",
        Roles::STAFF,
        false,
        subscribe::run,
        "Observe a channel or queue without joining.",
    ),
    builtin(
        "Unsubscribe",
        Roles::STAFF,
        false,
        unsubscribe::run,
        "Stop observing a channel or queue.",
    ),
    builtin(
        "GetEngagements",
        Roles::STAFF,
        false,
        get_engagements::run,
        "Read a page of a queue's open engagements.",
    ),
    builtin(
        "GetMessages",
        Roles::ALL,
        false,
        get_messages::run,
        "Read a page of a channel's history.",
    ),
];

const fn builtin(
    name: &'static str,
    roles: Roles,
    pipelined: bool,
    run: BuiltinFn,
    description: &'static str,
) -> Builtin {
    Builtin {
        name,
        roles,
        pipelined,
        description,
        run: Some(run),
    }
}

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
        for builtin in &BUILTINS {
            registry.order.push(builtin.name.to_owned());
            registry.entries.insert(
                builtin.name.to_owned(),
                ActionEntry {
                    kind: ActionKind::Builtin,
                    description: builtin.description.to_owned(),
                    preset: None,
                    roles: builtin.roles,
                    pipelined: builtin.pipelined,
                    implementation: match builtin.run {
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
    pub fn builtin(name: &str) -> Option<BuiltinAction> {
        BUILTINS
            .iter()
            .find(|b| b.name == name)
            .and_then(|b| b.run)
            .map(|run| BuiltinAction { run })
    }

    /// Whether `name` is a custom action (what `TriggerAction` may run).
    pub fn is_custom(&self, name: &str) -> bool {
        self.entries
            .get(name)
            .is_some_and(|e| e.kind == ActionKind::Custom)
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
                pipelined: false,
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
                pipelined: false,
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

    /// Runs `action` through its listeners and implementation, and
    /// answers once its change is durable.
    pub async fn invoke(
        self: Arc<Self>,
        ctx: &ActionContext,
        action: &str,
        payload: Value,
    ) -> ActionResult {
        self.invoke_boxed(ctx, action, payload).await
    }

    /// Boxed, so that actions running actions (custom presets, listeners)
    /// can recurse.
    pub(crate) fn invoke_boxed<'a>(
        &'a self,
        ctx: &'a ActionContext,
        action: &'a str,
        payload: Value,
    ) -> BoxFuture<'a, ActionResult> {
        Box::pin(self.run_pipeline(ctx, action, payload))
    }

    async fn run_pipeline(
        &self,
        ctx: &ActionContext,
        action: &str,
        payload: Value,
    ) -> ActionResult {
        let entry = self.admit(ctx, action)?;
        let mut payload = payload;
        for listener in self.before.get(action).into_iter().flatten() {
            payload = listener(ctx.clone(), payload).await?;
            if !payload.is_object() {
                return Err(ActionError::Internal(format!(
                    "a before{action} listener returned a payload that is not a map"
                )));
            }
        }
        let after = self.after.get(action);
        let kept = after.map(|_| payload.clone());
        let result = match &entry.implementation {
            Implementation::Trigger => trigger_action::run(self, ctx, payload).await?,
            Implementation::Builtin(run) => run(ctx, payload)?.await?,
            Implementation::Handler(handler) => handler(ctx.clone(), payload).await?,
            Implementation::Preset { target } => {
                let preset = entry.preset.clone().unwrap_or(Value::Null);
                let merged = merge(preset, payload);
                self.invoke_boxed(ctx, target, merged).await?
            }
        };
        if let (Some(listeners), Some(payload)) = (after, kept) {
            for listener in listeners {
                listener(ctx.clone(), payload.clone(), result.clone()).await;
            }
        }
        Ok(result)
    }

    /// The role and rate checks every run of an action passes first.
    fn admit(&self, ctx: &ActionContext, action: &str) -> Result<&ActionEntry, ActionError> {
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
        Ok(entry)
    }

    /// Whether a session may run `action` while its earlier replies wait
    /// for durability: a built-in marked so in [`BUILTINS`], not replaced,
    /// with no listener. Anything else runs through [`Self::invoke`] once
    /// the session's earlier replies are out.
    pub(crate) fn pipelinable(&self, action: &str) -> bool {
        self.entries.get(action).is_some_and(|entry| {
            entry.pipelined
                && matches!(entry.implementation, Implementation::Builtin(_))
                && !self.before.contains_key(action)
                && !self.after.contains_key(action)
        })
    }

    /// Runs a [`Self::pipelinable`] action now and returns its pending
    /// result: its place in its channel's order is decided when this
    /// returns.
    pub(crate) fn start(
        &self,
        ctx: &ActionContext,
        action: &str,
        payload: Value,
    ) -> Result<Pending<Value>, ActionError> {
        let entry = self.admit(ctx, action)?;
        match entry.implementation {
            Implementation::Builtin(run) => run(ctx, payload),
            _ => Err(ActionError::Internal(format!(
                "{action} cannot be pipelined"
            ))),
        }
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
        Some(name) => {
            let principal = crate::auth::Principal {
                identity: name.clone(),
                role: Role::Service,
                anonymous: false,
            };
            match ctx.node.engine.identify(&principal).await {
                Ok(actor) => ActionContext {
                    actor,
                    session: None,
                    internal: true,
                    ..ctx
                },
                Err(e) => {
                    tracing::warn!(listener = %config.on, identity = %name, error = %e, "after listener cannot act");
                    return;
                }
            }
        }
        None => ctx.internal(),
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

/// The session a command came from, for the actions that need one.
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

    /// The JavaScript SDK lists the built-ins too (it refuses to register
    /// a custom action under a built-in's name): its list is this table's.
    #[test]
    fn the_sdk_knows_every_builtin() {
        let sdk = include_str!("../../clients/js/src/actions.js");
        let list = sdk
            .split("BUILTIN_ACTIONS = Object.freeze([")
            .nth(1)
            .and_then(|rest| rest.split("]);").next())
            .expect("the SDK's BUILTIN_ACTIONS");
        let mut sdk_names: Vec<&str> = list
            .split(',')
            .map(|item| item.trim().trim_matches('"'))
            .filter(|item| !item.is_empty())
            .collect();
        let mut ours: Vec<&str> = BUILTINS.iter().map(|b| b.name).collect();
        sdk_names.sort();
        ours.sort();
        assert_eq!(sdk_names, ours);
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
