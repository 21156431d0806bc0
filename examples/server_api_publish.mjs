// Publish into a trio_rt room from Node, with nothing but the standard `fetch`
// (docs/server-api.md). Usage: node server_api_publish.mjs <api url> <api key> <room> <text>
// Prints the server's answer: {"room": ..., "position": {"offset": ..., "epoch": ...}}.
const [apiUrl, apiKey, room, text] = process.argv.slice(2);

const response = await fetch(`${apiUrl}/api/publish`, {
  method: "POST",
  headers: {
    "Content-Type": "application/json",
    Authorization: `Bearer ${apiKey}`,
    // A retry with the same key is stored and delivered once.
    "Idempotency-Key": `node-${room}-${text}`,
  },
  body: JSON.stringify({ room, data: { text, from: "node" } }),
});
const answer = await response.json();
if (!response.ok) {
  console.error(`publish refused: ${response.status} ${answer.error.code}: ${answer.error.message}`);
  process.exit(1);
}
console.log(JSON.stringify(answer));
