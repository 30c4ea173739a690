// lapsv serve's browser page: record (MediaRecorder), enrol, verify, identify, and who
// spoke when in a conversation (a coloured timeline of the speakers' segments).
// Plain JavaScript, no build step. The API key is read from its field for each request and
// kept nowhere else: no cookie, no web storage. Text from the server is shown with
// textContent only.
"use strict";

const $ = (id) => document.getElementById(id);
const RATE = 16000; // what lapsv models take; the server resamples anything else too
let recording = null; // {blob, seconds, filename}
let recorder = null;
let stopTimer = null;

function show(text, decision) {
  $("result").textContent = text;
  const box = $("decision");
  box.dataset.decision = decision || "";
  box.className = decision === "same" || decision === "different" ? decision : "";
  box.textContent = {
    same: "SAME speaker",
    different: "DIFFERENT speakers",
    none: "no decision (no threshold)",
  }[decision] || decision || "";
}

function setStatus(text) {
  $("status").textContent = text;
}

function encodeWav(samples, rate) {
  const buffer = new ArrayBuffer(44 + 2 * samples.length);
  const view = new DataView(buffer);
  const text = (offset, s) => [...s].forEach((c, i) => view.setUint8(offset + i, c.charCodeAt(0)));
  text(0, "RIFF");
  view.setUint32(4, 36 + 2 * samples.length, true);
  text(8, "WAVEfmt ");
  view.setUint32(16, 16, true);
  view.setUint16(20, 1, true); // PCM
  view.setUint16(22, 1, true); // mono
  view.setUint32(24, rate, true);
  view.setUint32(28, 2 * rate, true);
  view.setUint16(32, 2, true);
  view.setUint16(34, 16, true);
  text(36, "data");
  view.setUint32(40, 2 * samples.length, true);
  samples.forEach((x, i) => view.setInt16(44 + 2 * i, Math.max(-1, Math.min(1, x)) * 32767, true));
  return new Blob([buffer], { type: "audio/wav" });
}

// MediaRecorder gives webm/ogg (Opus); decode it here and send 16 kHz mono WAV, which
// every lapsv server reads.
async function toWav(blob) {
  const context = new AudioContext();
  let decoded;
  try {
    decoded = await context.decodeAudioData(await blob.arrayBuffer());
  } finally {
    context.close();
  }
  const offline = new OfflineAudioContext(1, Math.ceil(decoded.duration * RATE), RATE);
  const source = offline.createBufferSource();
  source.buffer = decoded;
  source.connect(offline.destination);
  source.start();
  const rendered = await offline.startRendering();
  return { blob: encodeWav(rendered.getChannelData(0), RATE), seconds: rendered.duration };
}

function useRecording(blob, seconds, filename) {
  recording = { blob, seconds, filename };
  const player = $("playback");
  if (player.src) URL.revokeObjectURL(player.src);
  player.src = URL.createObjectURL(blob);
  player.hidden = false;
  const length = seconds === null ? "" : ` ${seconds.toFixed(1)} s`;
  setStatus(`recorded${length}: ${filename}`);
}

async function startRecording() {
  const stream = await navigator.mediaDevices.getUserMedia({
    audio: { echoCancellation: false, noiseSuppression: false, autoGainControl: false },
  });
  const chunks = [];
  recorder = new MediaRecorder(stream);
  recorder.ondataavailable = (event) => event.data.size && chunks.push(event.data);
  recorder.onstop = async () => {
    stream.getTracks().forEach((track) => track.stop());
    clearTimeout(stopTimer);
    $("record").disabled = false;
    $("stop").disabled = true;
    try {
      const wav = await toWav(new Blob(chunks, { type: recorder.mimeType }));
      useRecording(wav.blob, wav.seconds, "microphone.wav");
    } catch (error) {
      setStatus(`could not decode the recording: ${error}`);
    }
  };
  recorder.start();
  $("record").disabled = true;
  $("stop").disabled = false;
  setStatus("recording...");
  const seconds = Math.min(60, Math.max(1, Number($("seconds").value) || 5));
  stopTimer = setTimeout(() => recorder.state === "recording" && recorder.stop(), seconds * 1000);
}

async function call(method, path, form) {
  const key = $("key").value.trim();
  if (!key) throw new Error("enter the API key first");
  const response = await fetch(path, {
    method,
    body: form,
    headers: { Authorization: `Bearer ${key}` },
    cache: "no-store",
  });
  let body;
  try {
    body = await response.json();
  } catch {
    body = { error: response.statusText };
  }
  if (!response.ok) throw new Error(`${response.status}: ${body.error || JSON.stringify(body)}`);
  return body;
}

function withRecording(form, field) {
  if (!recording) throw new Error("record something (or choose a file) first");
  form.append(field, recording.blob, recording.filename);
  return form;
}

const sign = (x, digits) => (x >= 0 ? "+" : "") + x.toFixed(digits);

function verifyText(r) {
  const lines = [`${r.mean_subtracted ? "cosine (mean-subtracted)" : "cosine"}: ${r.cosine.toFixed(4)}`];
  if (r.asnorm !== null) lines.push(`AS-norm: ${r.asnorm.toFixed(4)}`);
  if (r.llr !== null) lines.push(`calibrated LLR: ${sign(r.llr, 3)}`);
  if (r.same === null) {
    lines.push("decision: none (no threshold: give one, or calibrate the model)");
  } else {
    const verdict = r.same ? "SAME speaker" : "DIFFERENT speakers";
    lines.push(`decision: ${verdict} (score ${sign(r.decision_score, 4)} vs threshold ` +
      `${sign(r.threshold, 4)} from ${r.threshold_source})`);
  }
  return lines.join("\n");
}

function identifyText(answer) {
  const best = answer.candidates[0];
  let verdict = `best match ${best.name} (no threshold: no decision)`;
  if (answer.answer !== null) {
    const known = answer.answer !== "unknown";
    verdict = `${answer.answer} (${known ? "" : `best ${best.name}: `}${answer.score_name} ` +
      `${sign(best.score, 3)} ${known ? ">=" : "<"} threshold ${sign(answer.threshold, 3)}, ` +
      `${answer.threshold_source})`;
  }
  const rows = answer.candidates.map((c, i) =>
    `${String(i + 1).padStart(4)}. ${c.name.padEnd(24)} ${answer.score_name} ${sign(c.score, 3).padStart(8)}`);
  return [`${answer.source} -> ${verdict}`, ...rows].join("\n");
}

const PALETTE = ["#3a6fd8", "#e0812f", "#2f9e5a", "#c2413a", "#8a5bd1",
  "#2a9fb0", "#b5892b", "#d45aa1", "#6b7a8f", "#4f8f2f"];
const colour = (i) => PALETTE[i] || `hsl(${(i * 137.5) % 360}, 55%, 48%)`;
const timeText = (x) => x.toFixed(2);

function clearDiarization() {
  $("diarization").hidden = true;
  $("timeline").replaceChildren();
  $("legend").replaceChildren();
  $("segments").tBodies[0].replaceChildren();
}

// One coloured block per segment on a bar as long as the recording, a legend of the
// speakers (enrolled names or SPEAKER_xx) with their talk time, and the segments' table.
function drawDiarization(r) {
  const colours = new Map(r.speakers.map((speaker, i) => [speaker, colour(i)]));
  const talk = new Map(r.speakers.map((speaker) => [speaker, 0]));
  const duration = r.duration || 1;
  const rows = $("segments").tBodies[0];
  for (const segment of r.segments) {
    const block = document.createElement("div");
    block.className = "segment";
    block.dataset.speaker = segment.speaker;
    block.style.left = `${(100 * segment.start) / duration}%`;
    block.style.width = `${(100 * (segment.end - segment.start)) / duration}%`;
    block.style.background = colours.get(segment.speaker);
    block.title = `${segment.speaker}: ${timeText(segment.start)}-${timeText(segment.end)} s`;
    $("timeline").append(block);
    const row = rows.insertRow();
    for (const time of [segment.start, segment.end]) {
      const cell = row.insertCell();
      cell.className = "time";
      cell.textContent = timeText(time);
    }
    row.insertCell().append(swatch(colours.get(segment.speaker)), segment.speaker);
    talk.set(segment.speaker, talk.get(segment.speaker) + segment.end - segment.start);
  }
  for (const speaker of r.speakers) {
    const item = document.createElement("span");
    item.dataset.speaker = speaker;
    item.append(swatch(colours.get(speaker)), `${speaker} (${talk.get(speaker).toFixed(1)} s)`);
    $("legend").append(item);
  }
  $("axis-end").textContent = `${r.duration.toFixed(1)} s`;
  $("diarization").hidden = false;
}

function swatch(color) {
  const box = document.createElement("span");
  box.className = "swatch";
  box.style.background = color;
  return box;
}

function diarizationText(r) {
  const lines = [`${r.file}: ${r.num_speakers} speaker(s) in ${r.duration.toFixed(1)} s ` +
    `(${r.speech_seconds.toFixed(1)} s of speech), ${r.segments.length} segment(s)`];
  for (const [label, name] of Object.entries(r.names)) lines.push(`${label} is ${name}`);
  if (!Object.keys(r.names).length) lines.push("no enrolled speaker recognised");
  return lines.join("\n");
}

// The conversation panel's upload (or the recording above) with its options.
function conversationForm() {
  const file = $("diarize-file").files[0];
  const form = file ? new FormData() : withRecording(new FormData(), "audio");
  if (file) form.append("audio", file, file.name);
  const speakers = $("num-speakers").value.trim();
  if (speakers !== "") form.append("num_speakers", speakers);
  const value = $("threshold").value.trim();
  if (value !== "") form.append("name_threshold", value);
  return form;
}

// A speaker turn per paragraph: "SPEAKER_00: words ...", names where enrolled.
function transcriptText(r) {
  const turns = [];
  for (const segment of r.segments) {
    const who = segment.speaker === null ? "" : r.names[segment.speaker] || segment.speaker;
    const last = turns[turns.length - 1];
    if (last && last.who === who) last.text += ` ${segment.text}`;
    else turns.push({ who, text: segment.text });
  }
  const head = `${r.file}: ${r.duration.toFixed(1)} s, language ${r.language}`;
  return [head, ...turns.map((t) => (t.who ? `${t.who}: ${t.text}` : t.text))].join("\n\n");
}

function threshold(form) {
  const value = $("threshold").value.trim();
  if (value !== "") form.append("threshold", value);
  return form;
}

const actions = {
  async enroll() {
    const name = $("name").value.trim();
    if (!name) throw new Error("give the speaker's name");
    const form = withRecording(new FormData(), "audio");
    if ($("replace").checked) form.append("replace", "true");
    const r = await call("POST", `v1/speakers/${encodeURIComponent(name)}`, form);
    const what = r.new_speaker ? "enrolled new speaker" : "updated speaker";
    show(`${what} ${r.name}: ${r.added} recording(s) added, ${r.updated} updated; ` +
      `${r.total} in total (${r.seconds.toFixed(1)} s)`, "enrolled");
  },
  async verify() {
    const name = $("verify-name").value.trim();
    if (!name) throw new Error("give the enrolled name to verify against");
    const form = threshold(withRecording(new FormData(), "a"));
    form.append("name", name);
    const r = await call("POST", "v1/verify", form);
    show(verifyText(r), r.decision || "none");
  },
  async identify() {
    const form = threshold(withRecording(new FormData(), "audio"));
    form.append("top_k", $("top-k").value || "3");
    const r = await call("POST", "v1/identify", form);
    const answer = r.results[0];
    show(r.results.map(identifyText).join("\n"), answer.answer || answer.candidates[0].name);
  },
  async diarize() {
    clearDiarization();
    const r = await call("POST", "v1/diarize", conversationForm());
    drawDiarization(r);
    show(diarizationText(r), `${r.num_speakers} speaker${r.num_speakers === 1 ? "" : "s"}`);
  },
  async transcribe() {
    clearDiarization();
    const r = await call("POST", "v1/transcribe", conversationForm());
    drawDiarization({ ...r, segments: r.segments.filter((s) => s.speaker !== null) });
    show(transcriptText(r), `${r.speakers.length} speaker${r.speakers.length === 1 ? "" : "s"}`);
  },
};

for (const [name, action] of Object.entries(actions)) {
  $(name).addEventListener("click", async () => {
    const button = $(name);
    button.disabled = true;
    show("working...", "");
    try {
      await action();
    } catch (error) {
      show(`error: ${error.message || error}`, "error");
    } finally {
      button.disabled = false;
    }
  });
}

$("record").addEventListener("click", () =>
  startRecording().catch((error) => setStatus(`no microphone: ${error.message || error}`)));
$("stop").addEventListener("click", () => recorder && recorder.state === "recording" && recorder.stop());
$("file").addEventListener("change", () => {
  const file = $("file").files[0];
  if (file) useRecording(file, null, file.name);
});
