// Drives the proxy with the official openai Node SDK: responses.create and chat.completions.create,
// both streamed. Prints one JSON line with what the app saw; the Python test asserts on it.
import OpenAI from "openai";

const [baseURL, apiKey, user] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey, maxRetries: 0 });

const responseEvents = [];
const stream = await client.responses.create({
  model: "fake-model",
  input: "node responses",
  instructions: "Node app.",
  user,
  stream: true,
});
for await (const event of stream) responseEvents.push(event);

let chatText = "";
const chunks = [];
const chat = await client.chat.completions.create({
  model: "fake-model",
  messages: [{ role: "user", content: "node chat" }],
  user,
  stream: true,
});
for await (const chunk of chat) {
  chunks.push(chunk);
  chatText += chunk.choices[0]?.delta?.content ?? "";
}

const completed = responseEvents.at(-1);
console.log(
  JSON.stringify({
    responseTypes: responseEvents.map((e) => e.type),
    responseText: responseEvents
      .filter((e) => e.type === "response.output_text.delta")
      .map((e) => e.delta)
      .join(""),
    completedInstructions: completed.response.instructions,
    chatText,
    raw: JSON.stringify([responseEvents, chunks]),
  }),
);
