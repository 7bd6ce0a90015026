// The widget's stable entry point, served by the broker at
// /webchat/v1/webchat.js for any site to import:
//
//   <script type="module">
//     import { createWebChat } from "https://chat.example.com/webchat/v1/webchat.js";
//     createWebChat({ brand: { name: "Acme" } });
//   </script>
//
// Its imports are relative to where it is served, so they load from the
// broker (cross-origin, with the broker's CORS headers). Without a `url`
// option the widget connects to the broker it was loaded from.
import { createWebChat as create, WebChat, DEFAULT_STRINGS, DEFAULT_FORM, THEME_VARIABLES } from "../../sdk/webchat/index.js";

const brokerUrl = (() => {
  const url = new URL("../../ws", import.meta.url);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  return url.href;
})();

/** `createWebChat(options)`, connecting to this broker unless `options.url` says otherwise. */
export function createWebChat(options = {}) {
  return create({ url: brokerUrl, ...options });
}

export { WebChat, DEFAULT_STRINGS, DEFAULT_FORM, THEME_VARIABLES, brokerUrl };

// For pages that reach it as a global, like other web-chat products.
globalThis.Switchboard = Object.assign(globalThis.Switchboard ?? {}, { createWebChat, WebChat, brokerUrl });
