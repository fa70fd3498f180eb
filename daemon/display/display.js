// roomtranslate caption display: MQTT over WebSockets (vendored mqtt.js), no build step.
//
// URL parameters: broker (ws:// or wss:// URL; default: the server that served this page),
// room (room_id, default room-1), prefix (default roomtranslate), lang (caption language;
// default: the browser's language if the room captions it, else the room's target),
// kiosk=1 (a TV: no controls). Everything received is shown with textContent, never as
// HTML.
"use strict";

(function () {
  const LANG_NAMES = {
    en: "English", zh: "中文", ru: "Русский", fr: "Français", de: "Deutsch",
    pt: "Português", es: "Español", it: "Italiano", ko: "한국어", ja: "日本語", yue: "粵語",
    id: "Bahasa Indonesia", vi: "Tiếng Việt", th: "ไทย", ar: "العربية", hi: "हिन्दी",
    el: "Ελληνικά", tr: "Türkçe",
  };
  const RTL = new Set(["ar"]);
  const MAX_LINES = 40;
  const RECONNECT_MS = 2000;

  const params = new URLSearchParams(location.search);
  const prefix = params.get("prefix") || "roomtranslate";
  const room = params.get("room") || "room-1";
  const brokerUrl = params.get("broker") || defaultBroker();
  const base = prefix + "/" + room + "/";

  const el = {
    room: document.getElementById("room"),
    lang: document.getElementById("lang"),
    link: document.getElementById("link"),
    banner: document.getElementById("banner"),
    captions: document.getElementById("captions"),
    share: document.getElementById("share"),
    shareToggle: document.getElementById("share-toggle"),
    qr: document.getElementById("qr"),
  };

  const state = {
    lang: params.get("lang") || "",
    subscribed: "",
    connected: false,
    everConnected: false,
    online: null, // null: no availability seen yet
    roomLangs: [],
    lines: new Map(), // key -> <p>
    badMessages: 0,
  };

  function defaultBroker() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    return scheme + "//" + (location.host || "localhost:9001") + "/";
  }

  function captionTopic(lang) {
    return base + "captions/" + lang;
  }

  function parse(text) {
    try {
      return JSON.parse(text);
    } catch (err) {
      state.badMessages += 1;
      return null;
    }
  }

  // ---------------------------------------------------------------------------- lines

  function pad(n) {
    return String(n).padStart(9, "0");
  }

  function upsert(ev) {
    if (ev === null || typeof ev !== "object" || typeof ev.text !== "string") {
      state.badMessages += 1;
      return;
    }
    const key = String(ev.speech_start) + "#" + String(ev.utterance_id);
    let line = state.lines.get(key);
    if (line && line.classList.contains("final") && !ev.final) {
      return; // a late partial never undoes a final
    }
    if (!ev.text) {
      if (line && ev.final) remove(key); // ended with nothing to show
      return;
    }
    if (!line) {
      line = document.createElement("p");
      line.className = "line";
      line.dataset.order = String(ev.speech_start) + "|" + pad(ev.utterance_id);
      line.dataset.utterance = String(ev.utterance_id);
      place(line);
      state.lines.set(key, line);
    }
    line.textContent = ev.text;
    line.classList.toggle("final", Boolean(ev.final));
    line.classList.toggle("partial", !ev.final);
    line.classList.toggle("incomplete", Boolean(ev.final) && ev.complete === false);
    trim();
  }

  function place(line) {
    const order = line.dataset.order;
    for (const other of el.captions.children) {
      if (other.dataset.order > order) {
        el.captions.insertBefore(line, other);
        return;
      }
    }
    el.captions.appendChild(line);
  }

  function remove(key) {
    const line = state.lines.get(key);
    if (line) line.remove();
    state.lines.delete(key);
  }

  function trim() {
    while (el.captions.children.length > MAX_LINES) {
      const first = el.captions.firstElementChild;
      for (const [key, line] of state.lines) {
        if (line === first) state.lines.delete(key);
      }
      first.remove();
    }
  }

  function clearLines() {
    el.captions.replaceChildren();
    state.lines.clear();
  }

  // ------------------------------------------------------------------- banner and link

  function showState() {
    let message = "";
    if (!state.connected) {
      message = state.everConnected
        ? "Connection lost — reconnecting…"
        : "Connecting to the caption service…";
    } else if (state.online === false) {
      message = "Captions are offline: the room's translator is not running";
    } else if (state.online === null) {
      message = "Waiting for the room's translator…";
    }
    el.banner.textContent = message;
    el.banner.hidden = message === "";
    el.link.classList.toggle("up", state.connected);
    el.link.textContent = state.connected ? "live" : "offline";
    document.body.dataset.online = String(state.connected && state.online === true);
  }

  // ------------------------------------------------------------------------- languages

  function langName(code) {
    return LANG_NAMES[code] || code;
  }

  function onStatus(status) {
    if (status === null || typeof status !== "object") return;
    const target = typeof status.target_lang === "string" ? status.target_lang : "";
    const extra = Array.isArray(status.caption_langs) ? status.caption_langs : [];
    const langs = [target, ...extra].filter((l) => typeof l === "string" && l);
    if (langs.join(",") !== state.roomLangs.join(",")) {
      state.roomLangs = langs;
      fillPicker();
    }
    if (!state.lang) setLang(preferredLang(langs, target));
  }

  function preferredLang(langs, target) {
    for (const wanted of navigator.languages || []) {
      const code = wanted.toLowerCase().split("-")[0];
      if (langs.includes(code)) return code;
    }
    return target || langs[0] || "";
  }

  function fillPicker() {
    const langs = state.roomLangs.slice();
    if (state.lang && !langs.includes(state.lang)) langs.push(state.lang);
    el.lang.replaceChildren(...langs.map((code) => new Option(langName(code), code)));
    el.lang.value = state.lang;
  }

  function setLang(next) {
    if (!next || next === state.subscribed) return;
    if (state.subscribed) {
      client.unsubscribe([captionTopic(state.subscribed), captionTopic(state.subscribed) + "/recent"]);
    }
    state.lang = next;
    state.subscribed = next;
    clearLines();
    client.subscribe([captionTopic(next), captionTopic(next) + "/recent"], { qos: 1 });
    document.documentElement.lang = next;
    el.captions.dir = RTL.has(next) ? "rtl" : "ltr";
    fillPicker();
    const url = new URL(location.href);
    url.searchParams.set("lang", next);
    history.replaceState(null, "", url);
    drawQr(location.href);
  }

  // -------------------------------------------------------------------------- QR code

  function drawQr(url) {
    qrcode.stringToBytes = qrcode.stringToBytesFuncs["UTF-8"];
    const code = qrcode(0, "M");
    code.addData(url, "Byte");
    code.make();
    const modules = code.getModuleCount();
    const quiet = 4;
    const scale = Math.max(2, Math.floor(512 / (modules + 2 * quiet)));
    const size = (modules + 2 * quiet) * scale;
    const canvas = el.qr;
    canvas.width = size;
    canvas.height = size;
    const ctx = canvas.getContext("2d");
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, size, size);
    ctx.fillStyle = "#000";
    for (let row = 0; row < modules; row += 1) {
      for (let col = 0; col < modules; col += 1) {
        if (code.isDark(row, col)) {
          ctx.fillRect((col + quiet) * scale, (row + quiet) * scale, scale, scale);
        }
      }
    }
    canvas.dataset.url = url;
  }

  // ----------------------------------------------------------------------------- MQTT

  const client = mqtt.connect(brokerUrl, {
    clientId: "display-" + Math.random().toString(16).slice(2, 10),
    clean: true,
    keepalive: 30,
    connectTimeout: 5000,
    reconnectPeriod: RECONNECT_MS,
    protocolVersion: 4,
  });

  client.on("connect", () => {
    state.connected = true;
    state.everConnected = true;
    state.online = null;
    client.subscribe([base + "availability", base + "status"], { qos: 1 });
    if (state.subscribed) {
      client.subscribe([captionTopic(state.subscribed), captionTopic(state.subscribed) + "/recent"], { qos: 1 });
    }
    showState();
  });
  client.on("close", () => {
    state.connected = false;
    showState();
  });
  client.on("offline", () => {
    state.connected = false;
    showState();
  });
  client.on("error", (err) => {
    console.warn("caption display: MQTT error:", err && err.message);
  });

  const decoder = new TextDecoder();
  client.on("message", (topic, payload) => {
    const text = decoder.decode(payload);
    if (topic === base + "availability") {
      state.online = text === "online";
      showState();
    } else if (topic === base + "status") {
      if (text) onStatus(parse(text));
    } else if (state.subscribed && topic === captionTopic(state.subscribed)) {
      upsert(parse(text));
    } else if (state.subscribed && topic === captionTopic(state.subscribed) + "/recent") {
      const doc = text ? parse(text) : null; // empty: the room cleared its recent captions
      if (doc && Array.isArray(doc.captions)) doc.captions.forEach(upsert);
    }
  });

  // ---------------------------------------------------------------------------- start

  el.room.textContent = room;
  if (params.get("kiosk") === "1") document.body.classList.add("kiosk");
  el.lang.addEventListener("change", () => setLang(el.lang.value));
  el.shareToggle.addEventListener("click", () => {
    const open = el.share.classList.toggle("open");
    el.shareToggle.setAttribute("aria-expanded", String(open));
  });
  if (state.lang) {
    const wanted = state.lang;
    state.lang = "";
    setLang(wanted);
  } else {
    drawQr(location.href);
  }
  showState();
})();
