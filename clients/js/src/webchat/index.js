/**
 * @switchboard/client/webchat: the embeddable web-chat widget of the
 * Switchboard chat broker. `createWebChat(options)` mounts it (in a shadow
 * root, isolated from the page's CSS) and connects; the result exposes the
 * web-chat Actions Framework API (`Actions.invokeAction`, `Actions.on`,
 * `Actions.replaceAction`, `Actions.registerAction`,
 * `actions.triggerAction`, `actions.getActions`).
 */
export { createWebChat, WebChat, DEFAULT_STRINGS, DEFAULT_FORM } from "./widget.js";
export { THEME_VARIABLES } from "./styles.js";
