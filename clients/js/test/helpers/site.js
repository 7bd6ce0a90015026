// Another origin for the widget: a tiny static server on its own loopback
// port whose page embeds the widget from the broker with one script tag, as
// a company's site would. `?config=<json>` is passed to createWebChat.
import { createServer } from "node:http";

/** The page: hostile-looking CSS of its own, a main landmark, the one script tag. */
export function sitePage(brokerHttpUrl, config) {
  // JSON in a script: never let a "</script>" in a value end the tag.
  const literal = JSON.stringify(config).replace(/</g, "\\u003c");
  return `<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>Other Shop</title>
  <link rel="icon" href="data:,">
  <style>
    body { font: 20px Georgia, serif; color: #111; margin: 2rem; }
    button { background: lime; border: 4px dotted red; }
    li, p { letter-spacing: 0.3em; }
  </style>
  <script type="module">
    import { createWebChat } from "${brokerHttpUrl}/webchat/v1/webchat.js";
    window.chat = createWebChat(${literal});
  </script>
</head>
<body>
  <main>
    <h1>Other Shop</h1>
    <p>An ordinary page on another origin that embeds the chat.</p>
    <p><a href="#pricing">Pricing</a></p>
  </main>
</body>
</html>`;
}

/** Starts the site server; `page(config)` is the URL of a page embedding the widget with `config`. */
export async function startSite(brokerHttpUrl) {
  const server = createServer((req, res) => {
    const url = new URL(req.url, "http://site.invalid");
    if (url.pathname !== "/") {
      res.writeHead(404, { "content-type": "text/plain" });
      res.end("not found\n");
      return;
    }
    let config = {};
    try {
      config = JSON.parse(url.searchParams.get("config") ?? "{}");
    } catch {
      res.writeHead(400, { "content-type": "text/plain" });
      res.end("bad config\n");
      return;
    }
    res.writeHead(200, { "content-type": "text/html; charset=utf-8", "cache-control": "no-store" });
    res.end(sitePage(brokerHttpUrl, config));
  });
  await new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", resolve);
  });
  const origin = `http://127.0.0.1:${server.address().port}`;
  return {
    origin,
    page: (config = {}) => `${origin}/?config=${encodeURIComponent(JSON.stringify(config))}`,
    close: () => new Promise((resolve) => server.close(resolve)),
  };
}

/** A loopback port nothing listens on (yet). */
export async function freePort() {
  const server = createServer();
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address();
  await new Promise((resolve) => server.close(resolve));
  return port;
}
