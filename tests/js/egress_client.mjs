// LiveKit's official JS server SDK against `trackegress serve`: start a track egress, list it, stop it.
// Usage: node egress_client.mjs <service url> <api key> <api secret> <room> <track id> <filepath>
// Prints one JSON object: {started, listed, stopped} (EgressInfo JSON), or {error: {code, message, status}}.
import { DirectFileOutput, EgressClient } from 'livekit-server-sdk';

const [url, apiKey, apiSecret, room, trackId, filepath] = process.argv.slice(2);
const client = new EgressClient(url, apiKey, apiSecret);

try {
  const started = await client.startTrackEgress(room, new DirectFileOutput({ filepath }), trackId);
  await new Promise((resolve) => setTimeout(resolve, 2000));
  const listed = await client.listEgress({ egressId: started.egressId });
  const stopped = await client.stopEgress(started.egressId);
  console.log(JSON.stringify({
    started: started.toJson(), listed: listed.map((info) => info.toJson()), stopped: stopped.toJson(),
  }));
} catch (error) {
  console.log(JSON.stringify({ error: { code: error.code, message: error.message, status: error.status } }));
}
