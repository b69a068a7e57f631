// koclip-search web page: search box (IME-safe), a justified photo grid with infinite scroll,
// the photo viewer (← / → / Esc, its own URL, similar photos), search by a dropped or picked
// photo, folder/date filters, and the Duplicates view (choose a keeper, set the rest aside, undo).
"use strict";

const PAGE = 40;
const SIMILAR_IN_DETAIL = 12;
const ROW_HEIGHT = 220;        // the grid's target row height (px); rows are at most this tall
const SIMILAR_ROW_HEIGHT = 96; // the viewer's similar photos
const GAP = 6;
const SIMILAR_GAP = 4;
const DEBOUNCE_MS = 350;
const MAX_UPLOAD = 20 * 1024 * 1024;

const $ = (id) => document.getElementById(id);
const els = {
  form: $("search-form"), q: $("q"), pick: $("pick"), file: $("file"),
  under: $("under"), after: $("after"), before: $("before"), folders: $("folder-list"),
  clearFilters: $("clear-filters"), library: $("library"),
  current: $("current"), currentImg: $("current-img"), currentLabel: $("current-label"),
  currentClear: $("current-clear"),
  status: $("status"), message: $("message"), grid: $("grid"), sentinel: $("sentinel"),
  more: $("more"), drop: $("drop"),
  detail: $("detail"), detailClose: $("detail-close"), detailImg: $("detail-img"),
  detailPrev: $("detail-prev"), detailNext: $("detail-next"),
  detailName: $("detail-name"), detailPath: $("detail-path"), detailDate: $("detail-date"),
  detailSize: $("detail-size"), detailOriginal: $("detail-original"), detailMore: $("detail-more"),
  similar: $("similar"), similarStatus: $("similar-status"), meta: $("detail-meta"),
  searchView: $("search-view"), dupesView: $("dupes-view"), dupesOpen: $("dupes-open"),
  dupesBack: $("dupes-back"), dupesKind: $("dupes-kind"), dupesStatus: $("dupes-status"),
  dupesMessage: $("dupes-message"), dupesList: $("dupes-list"), dupesMore: $("dupes-more"),
};

// Friendly text per error code: Korean first, then English.
const MESSAGES = {
  no_library: ["아직 색인된 사진이 없어요. 먼저 사진 폴더를 색인하세요:",
               "No photos are indexed yet. Index a photo folder first:",
               "koclip-search index ~/Pictures"],
  empty_library: ["라이브러리가 비어 있어요. 사진 폴더를 색인하세요:",
                  "The library is empty. Index a photo folder:", "koclip-search index ~/Pictures"],
  no_results: ["맞는 사진이 없어요. 다른 말로 찾거나 필터를 풀어 보세요.",
               "No photos match. Try other words or clear the filters."],
  bad_image: ["이 파일은 사진으로 읽을 수 없어요 (JPEG, PNG, HEIC, WebP 등).",
              "This file cannot be read as a photo (JPEG, PNG, HEIC, WebP…)."],
  no_image: ["사진 파일을 골라 주세요.", "Please choose a photo file."],
  too_large: ["사진이 너무 커요 (최대 20 MB).", "The photo is too large (20 MB at most)."],
  bad_query: ["검색어를 이해하지 못했어요.", "The query could not be understood."],
  bad_date: ["날짜는 2023, 2023-05, 2023-05-01 처럼 적어 주세요.",
             "Write dates like 2023, 2023-05 or 2023-05-01."],
  bad_request: ["요청이 올바르지 않아요.", "The request is not valid."],
  bad_host: ["이 주소로는 열 수 없어요. 서버의 주소로 열어 주세요.",
             "This address is refused. Open the page at the server's own address."],
  cross_origin: ["다른 사이트에서 보낸 요청은 받지 않아요. 이 서버의 주소로 페이지를 열어 주세요.",
                 "Requests sent from another site are refused. Open the page at this server's address."],
  busy: ["지금 찾는 사람이 많아 서버가 바빠요. 잠시 뒤 다시 해 주세요.",
         "The server is busy (many searches, or large photos); try again in a moment."],
  upload_expired: ["사진을 다시 올려 주세요.", "Please drop the photo again."],
  model_mismatch: ["라이브러리와 다른 모델이에요.", "The model differs from the library's."],
  model_error: ["모델 파일을 읽을 수 없어요.", "The model's files cannot be read."],
  precision_unavailable: ["이 정밀도(precision)는 여기서 쓸 수 없어요. 서버를 실행한 사람에게 알려 주세요.",
                          "That precision cannot be used here; tell whoever runs the server."],
  library_error: ["라이브러리를 읽을 수 없어요.", "The library cannot be read."],
  not_found: ["사진을 찾을 수 없어요.", "The photo was not found."],
  unreadable: ["사진 파일을 읽을 수 없어요.", "The photo file cannot be read."],
  network: ["서버에 연결할 수 없어요.", "Cannot reach the server."],
  stale_group: ["그새 라이브러리가 바뀌어 이 묶음이 달라졌어요. 목록을 새로 불러왔어요.",
                "The library changed and this group is no longer the same; the list was reloaded."],
  library_busy: ["다른 프로그램이 라이브러리에 쓰는 중이에요. 끝난 뒤 다시 해 주세요.",
                 "Another program is writing to the library; try again when it is done."],
  set_aside_refused: ["사진을 옮길 수 없어요.", "The photos cannot be moved."],
  cross_filesystem: ["치워 둘 폴더가 다른 디스크에 있어요.",
                     "The set-aside folder is on another disk."],
  no_duplicates: ["중복 사진이 없어요.", "No duplicates found."],
  internal: ["서버에 문제가 생겼어요.", "Something went wrong on the server."],
};

class ApiError extends Error {
  constructor(code, message, status) {
    super(message);
    this.code = code;
    this.status = status;
  }
}

// A 503 with Retry-After (a full search queue, a busy decode budget, every replica busy) is
// tried again after the wait it names, at most BUSY_TRIES times, then shown.
const BUSY_TRIES = 2;
const BUSY_WAIT_CAP = 5;  // seconds

async function api(url, options = {}) {
  let res;
  for (let attempt = 0; ; attempt++) {
    try {
      res = await fetch(url, options);
    } catch (err) {
      throw new ApiError("network", String(err), 0);
    }
    const after = res.headers.get("Retry-After");
    const wait = after === null ? NaN : Number(after);
    if (res.status !== 503 || !(wait >= 0) || attempt >= BUSY_TRIES) break;
    await new Promise((done) => setTimeout(done, Math.min(wait, BUSY_WAIT_CAP) * 1000));
  }
  const body = await res.json().catch(() => null);
  if (!res.ok) {
    // Ray Serve's own 503 (every replica busy) has a plain-text body.
    const fallback = res.status === 503 ? "busy" : "internal";
    throw new ApiError((body && body.code) || fallback, (body && body.error) || res.statusText,
                       res.status);
  }
  noteUnderstood(body);
  return body;
}

// -- state --------------------------------------------------------------------------------

const state = {
  mode: null,        // {kind: "text", q} | {kind: "similar", id, label} | {kind: "image", token, label}
  key: "",           // what the grid shows now (mode + filters), to skip repeated searches
  next: 0,           // offset of the next page, or null when there are no more
  loading: false,
  gen: 0,            // bumped by every new search; late answers of older ones are dropped
  count: 0,
  hits: [],          // the results shown, in grid order (the viewer's ← / → walk them)
  took: 0,           // seconds the first page's request took: the search's own time
  pending: null,     // the page being fetched (a promise), so others can wait for it
};

function filters() {
  const out = {};
  for (const name of ["under", "after", "before"]) {
    const value = els[name].value.trim();
    if (value) out[name] = value;
  }
  if (understoodEls.sort.value !== "relevance") out.sort = understoodEls.sort.value;
  return out;
}

function params(extra) {
  const p = new URLSearchParams();
  for (const [k, v] of Object.entries({ ...filters(), ...extra })) {
    if (v !== undefined && v !== null && v !== "") p.set(k, v);
  }
  return p.toString();
}

function pageUrl(mode, offset, k) {
  const q = params({ k, offset });
  if (mode.kind === "text") return `/api/search?${params({ q: mode.q, k, offset })}`;
  if (mode.kind === "similar") return `/api/photos/${mode.id}/similar?${q}`;
  return `/api/image/${encodeURIComponent(mode.token)}?${q}`;
}

function modeKey(mode) {
  const f = JSON.stringify(filters());
  if (mode.kind === "text") return `t:${mode.q}|${f}`;
  if (mode.kind === "similar") return `s:${mode.id}|${f}`;
  return `i:${mode.token}|${f}`;
}

// -- messages -----------------------------------------------------------------------------

function showMessage(code, detail) {
  fillMessage(els.message, code, detail, true);
}

// One message box: Korean, English, the command that helps (if asked for), the detail.
function fillMessage(box, code, detail, withCommand) {
  const [ko, en, command] = MESSAGES[code] || MESSAGES.internal;
  const p1 = document.createElement("p");
  p1.textContent = ko;
  const p2 = document.createElement("p");
  p2.className = "en";
  p2.textContent = en;
  box.replaceChildren(p1, p2);
  if (withCommand && command) {
    const pre = document.createElement("code");
    pre.textContent = command;
    box.append(pre);
  }
  if (detail) {
    const d = document.createElement("p");
    d.className = "detail-text";
    d.textContent = detail;
    box.append(d);
  }
  box.className = `message ${code}`;
  box.hidden = false;
}

function hideMessage() {
  els.message.hidden = true;
}

function messageText(code) {
  const [ko, en] = MESSAGES[code] || MESSAGES.internal;
  return `${ko} ${en}`;
}

function setStatus(text) {
  els.status.textContent = text;
}

// -- the grid -----------------------------------------------------------------------------
// Justified rows, as photo apps lay them out: every photo keeps its shape (the width and
// height the library stored, EXIF orientation applied), each row is scaled to fill the width
// exactly and is at most ROW_HEIGHT tall; the last, unfinished row keeps ROW_HEIGHT.

function formatDate(iso) {
  if (!iso) return "";
  return iso.slice(0, 16).replace("T", " ");
}

function ratioOf(hit) {
  return hit.width > 0 && hit.height > 0 ? hit.width / hit.height : 4 / 3;
}

function card(hit, onOpen) {
  const li = document.createElement("li");
  li.className = "card";
  li.dataset.ratio = String(ratioOf(hit));
  const button = document.createElement("button");
  button.type = "button";
  button.className = "photo";
  button.dataset.id = hit.id;
  button.title = hit.relpath;
  const img = document.createElement("img");
  img.loading = "lazy";
  img.decoding = "async";
  img.alt = hit.relpath;
  img.src = hit.thumbnail;
  img.addEventListener("error", () => li.classList.add("broken"), { once: true });
  if (!(hit.width > 0 && hit.height > 0)) {
    // Not stored (an older library): the thumbnail's own shape, once it is here.
    img.addEventListener("load", () => {
      if (!img.naturalWidth || !img.naturalHeight) return;
      li.dataset.ratio = String(img.naturalWidth / img.naturalHeight);
      relayout(li.parentElement);
    }, { once: true });
  }
  button.append(img);
  button.addEventListener("click", () => onOpen(hit));
  const score = document.createElement("span");
  score.className = "score";
  score.textContent = hit.score == null ? "" : hit.score.toFixed(3);  // null: facts only
  const caption = document.createElement("span");
  caption.className = "caption";
  const name = hit.relpath.split("/").pop();
  caption.textContent = hit.taken_at ? `${formatDate(hit.taken_at).slice(0, 10)} · ${name}` : name;
  li.append(button, score, caption);
  return li;
}

const LAYOUT = new Map(); // list element -> [row height, gap]
const laidOutWidth = new WeakMap();

function justify(list) {
  const [rowHeight, gap] = LAYOUT.get(list);
  const width = list.clientWidth;
  laidOutWidth.set(list, width);
  if (!width) return;
  const target = Math.min(rowHeight, Math.max(rowHeight / 2, width / 2.5)); // narrow screens
  let top = 0;
  let row = [];
  let sum = 0;
  const place = (height, full) => {
    let left = 0;
    row.forEach((li, i) => {
      // The last photo of a full row takes what rounding left, so the row ends at the edge.
      const w = full && i === row.length - 1 ? width - left : Number(li.dataset.ratio) * height;
      li.style.left = `${left}px`;
      li.style.top = `${top}px`;
      li.style.width = `${w}px`;
      li.style.height = `${height}px`;
      left += w + gap;
    });
    top += height + gap;
    row = [];
    sum = 0;
  };
  for (const li of list.children) {
    row.push(li);
    sum += Number(li.dataset.ratio);
    const height = (width - gap * (row.length - 1)) / sum;
    if (height <= target) place(height, true);
  }
  if (row.length) place(Math.min(target, (width - gap * (row.length - 1)) / sum), false);
  list.style.height = `${Math.max(0, top - gap)}px`;
}

function relayout(list) {
  if (list && LAYOUT.has(list)) justify(list);
}

const resized = new ResizeObserver((entries) => {
  for (const entry of entries) {
    const list = entry.target;
    if (list.clientWidth !== laidOutWidth.get(list)) justify(list);
  }
});
for (const [list, target, gap] of [
  [els.grid, ROW_HEIGHT, GAP],
  [els.similar, SIMILAR_ROW_HEIGHT, SIMILAR_GAP],
]) {
  LAYOUT.set(list, [target, gap]);
  list.classList.add("justified");
  resized.observe(list);
}

function describe(mode) {
  if (mode.kind === "text") return `‘${mode.q}’`;
  return mode.label;
}

function clearResults() {
  state.next = 0;
  state.count = 0;
  state.hits = [];
  state.took = 0;
  state.pending = null;
  els.grid.replaceChildren();
  els.grid.style.height = "0px";
}

function startSearch(mode, { force = false } = {}) {
  const key = modeKey(mode);
  if (!force && key === state.key) return Promise.resolve();
  state.mode = mode;
  state.key = key;
  state.gen += 1;
  state.loading = false;
  clearResults();
  hideMessage();
  window.scrollTo({ top: 0 });
  syncUrl();
  return loadMore();
}

// The next page; while one is on its way, that one (the viewer's → may wait for it).
function loadMore() {
  if (!state.mode || state.next === null) return Promise.resolve();
  if (state.loading) return state.pending || Promise.resolve();
  state.pending = fetchPage();
  return state.pending;
}

async function fetchPage() {
  const gen = state.gen;
  const mode = state.mode;
  const first = state.count === 0;
  state.loading = true;
  els.more.hidden = first;
  if (first) setStatus("찾는 중… / Searching…");
  try {
    const sent = performance.now();
    const page = await api(pageUrl(mode, state.next, PAGE));
    if (gen !== state.gen) return;
    // The status line tells the search's own time: the first page's request, nothing after.
    if (first) state.took = (performance.now() - sent) / 1000;
    renderPage(page);
  } catch (err) {
    if (gen !== state.gen) return;
    state.next = null;
    setStatus("");
    showMessage(err.code, err.message);
  } finally {
    if (gen === state.gen) {
      state.loading = false;
      state.pending = null;
      els.more.hidden = true;
    }
  }
  if (gen === state.gen) fillViewport();
}

function renderPage(page) {
  const openFromGrid = (hit) => openViewer(state.hits, state.hits.indexOf(hit), "grid");
  els.grid.append(...page.results.map((hit) => card(hit, openFromGrid)));
  state.hits.push(...page.results);
  justify(els.grid);
  state.count += page.results.length;
  state.next = page.next_offset;
  if (state.count === 0) {
    setStatus(describe(state.mode));
    showMessage("no_results");
    return;
  }
  const more = state.next === null ? "" : "+";
  const secs = state.took.toFixed(2);
  setStatus(`${describe(state.mode)} — ${state.count}${more}장 / photos · ${secs} s`);
  updateViewerButtons();
}

// Keep loading while the sentinel is on screen (a tall window may need several pages).
function fillViewport() {
  const rect = els.sentinel.getBoundingClientRect();
  if (state.next !== null && rect.top < window.innerHeight + 800) loadMore();
}

new IntersectionObserver((entries) => {
  if (entries.some((e) => e.isIntersecting)) loadMore();
}, { rootMargin: "800px 0px" }).observe(els.sentinel);

// -- text search, IME-safe ----------------------------------------------------------------
// Korean (and Japanese/Chinese) input methods compose a syllable over several key presses;
// the half-built text (ㅂ, 바, 받…) must never be searched. While composing we only wait;
// compositionend (one syllable done) schedules a debounced search that the next syllable's
// compositionstart cancels. Enter searches at once, unless it only confirms a composition.

let composing = false;
let timer = null;

function schedule() {
  clearTimeout(timer);
  timer = setTimeout(() => runText(false), DEBOUNCE_MS);
}

function runText(force) {
  clearTimeout(timer);
  const q = els.q.value.trim();
  if (!q) {
    if (state.mode && state.mode.kind === "text") resetToWelcome();
    return Promise.resolve();
  }
  clearCurrent();
  if (dupes.open) closeDupes();
  return startSearch({ kind: "text", q }, { force });
}

els.q.addEventListener("compositionstart", () => {
  composing = true;
  clearTimeout(timer);
});
els.q.addEventListener("compositionend", () => {
  composing = false;
  schedule();
});
els.q.addEventListener("input", (event) => {
  if (event.isComposing || composing) return;
  schedule();
});
els.q.addEventListener("keydown", (event) => {
  if (event.key !== "Enter") return;
  // keyCode 229: the IME still owns this key press (it confirms the syllable); leave it be.
  if (event.isComposing || composing || event.keyCode === 229) return;
  event.preventDefault();
  runText(true);
});
els.form.addEventListener("submit", (event) => {
  event.preventDefault();
  if (!composing) runText(true);
});

// -- filters ------------------------------------------------------------------------------

let filterTimer = null;
function filtersChanged() {
  clearTimeout(filterTimer);
  filterTimer = setTimeout(() => {
    if (dupes.open) loadDupes();
    else if (state.mode) startSearch(state.mode);
  }, DEBOUNCE_MS);
}
for (const name of ["under", "after", "before"]) {
  els[name].addEventListener("change", filtersChanged);
  els[name].addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.isComposing && event.keyCode !== 229) {
      event.preventDefault();
      clearTimeout(filterTimer);
      if (dupes.open) loadDupes();
      else if (state.mode) startSearch(state.mode);
    }
  });
}
els.clearFilters.addEventListener("click", () => {
  els.under.value = els.after.value = els.before.value = "";
  if (dupes.open) loadDupes();
  else if (state.mode) startSearch(state.mode);
});

// -- search by photo: drop, pick, paste ---------------------------------------------------

function setCurrent(src, label) {
  els.currentImg.src = src;
  els.currentLabel.textContent = label;
  els.current.hidden = false;
}

function clearCurrent() {
  if (els.currentImg.src.startsWith("blob:")) URL.revokeObjectURL(els.currentImg.src);
  els.currentImg.removeAttribute("src");
  els.current.hidden = true;
}

async function searchByFile(file) {
  if (!file) return;
  hideMessage();
  if (file.size > MAX_UPLOAD) {
    showMessage("too_large");
    return;
  }
  if (file.type && !file.type.startsWith("image/")) {
    showMessage("bad_image", file.name);
    return;
  }
  if (dupes.open) closeDupes();
  state.gen += 1;
  const gen = state.gen;
  setStatus("사진을 보내는 중… / Sending the photo…");
  try {
    const sent = performance.now();
    const page = await api(`/api/image?${params({ k: PAGE, offset: 0 })}`, {
      method: "POST",
      headers: { "Content-Type": file.type || "application/octet-stream" },
      body: file,
    });
    if (gen !== state.gen) return;
    clearCurrent();
    setCurrent(URL.createObjectURL(file), file.name);
    const mode = { kind: "image", token: page.upload, label: `📷 ${file.name}` };
    state.mode = mode;
    state.key = modeKey(mode);
    state.loading = false;
    clearResults();
    state.took = (performance.now() - sent) / 1000;
    syncUrl();
    renderPage(page);
    fillViewport();
  } catch (err) {
    if (gen !== state.gen) return;
    setStatus("");
    showMessage(err.code, err.message);
  }
}

els.pick.addEventListener("click", () => els.file.click());
els.file.addEventListener("change", () => {
  searchByFile(els.file.files[0]);
  els.file.value = "";
});

let dragDepth = 0;
const hasFiles = (event) => event.dataTransfer && [...event.dataTransfer.types].includes("Files");
window.addEventListener("dragenter", (event) => {
  if (!hasFiles(event)) return;
  event.preventDefault();
  dragDepth += 1;
  els.drop.hidden = false;
});
window.addEventListener("dragover", (event) => {
  if (hasFiles(event)) event.preventDefault();
});
window.addEventListener("dragleave", () => {
  dragDepth = Math.max(0, dragDepth - 1);
  if (!dragDepth) els.drop.hidden = true;
});
window.addEventListener("drop", (event) => {
  if (!hasFiles(event)) return;
  event.preventDefault();
  dragDepth = 0;
  els.drop.hidden = true;
  searchByFile(event.dataTransfer.files[0]);
});
window.addEventListener("paste", (event) => {
  const file = [...(event.clipboardData ? event.clipboardData.files : [])][0];
  if (file && file.type.startsWith("image/")) searchByFile(file);
});

els.currentClear.addEventListener("click", () => {
  clearCurrent();
  resetToWelcome();
});

// -- the viewer: one photo, its facts and similar photos ----------------------------------
// ← / → walk the list the photo was opened from (the grid's results, loading the next page
// when needed, or the similar photos it was picked among); Esc, ✕ or the backdrop close it.
// The open photo is in the URL (?q=…&photo=ID): opening pushes one history entry, so Back
// closes the viewer; moving between photos replaces it; a shared URL runs its search and
// opens the photo.

const viewer = { list: [], index: -1, source: "grid", hit: null, leaving: null };
let detailGen = 0;

function humanSize(bytes) {
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(0)} KB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
}

function openViewer(list, index, source, { push = true } = {}) {
  if (index < 0 || index >= list.length) return;
  viewer.list = list;
  viewer.index = index;
  viewer.source = source;
  viewer.hit = list[index];
  const opening = !els.detail.open;
  showPhoto(viewer.hit);
  if (opening) {
    els.detail.showModal();
  }
  const url = urlNow();
  if (opening && push) history.pushState({ viewer: true }, "", url);
  else history.replaceState(history.state, "", url);
  updateViewerButtons();
}

function canStep(delta) {
  if (!els.detail.open) return false;
  const i = viewer.index + delta;
  if (i < 0) return false;
  if (i < viewer.list.length) return true;
  return viewer.source === "grid" && viewer.list === state.hits && state.next !== null;
}

function updateViewerButtons() {
  els.detailPrev.disabled = !canStep(-1);
  els.detailNext.disabled = !canStep(1);
}

async function step(delta) {
  if (!canStep(delta)) return;
  const list = viewer.list;
  if (viewer.index + delta >= list.length) {
    await loadMore(); // the next page of the results (or the one already on its way)
    if (!els.detail.open || viewer.list !== list) return;
    if (viewer.index + delta >= list.length) {
      updateViewerButtons();
      return;
    }
  }
  openViewer(list, viewer.index + delta, viewer.source);
}

function showPhoto(hit) {
  detailGen += 1;
  const gen = detailGen;
  const d = els;
  d.detailImg.src = hit.preview;
  d.detailImg.alt = hit.relpath;
  d.detailName.textContent = hit.relpath.split("/").pop();
  d.detailPath.textContent = hit.path;
  d.detailDate.textContent = formatDate(hit.taken_at);
  d.detailSize.textContent = hit.width && hit.height ? `${hit.width} × ${hit.height}` : "";
  d.detailOriginal.href = hit.original;
  d.detail.dataset.photo = hit.id;
  d.detailMore.onclick = async () => {
    await closeViewer();
    clearCurrent();
    setCurrent(hit.thumbnail, hit.relpath);
    startSearch({ kind: "similar", id: hit.id, label: `≈ ${hit.relpath}` });
  };
  d.similar.replaceChildren();
  d.similar.style.height = "0px";
  d.similarStatus.textContent = "찾는 중… / Searching…";
  d.meta.scrollTop = 0;
  (async () => {
    try {
      const [photo, page] = await Promise.all([
        api(`/api/photos/${hit.id}`),
        api(`/api/photos/${hit.id}/similar?${params({ k: SIMILAR_IN_DETAIL })}`),
      ]);
      if (gen !== detailGen) return;
      const source = photo.taken_at_source === "exif" ? "촬영 / taken" : "파일 시각 / file time";
      d.detailDate.textContent = `${formatDate(photo.taken_at)} (${source})`;
      d.detailSize.textContent = `${photo.width} × ${photo.height} · ${humanSize(photo.size)}`;
      const similar = page.results;
      const open = (h) => openViewer(similar, similar.indexOf(h), "similar");
      d.similar.replaceChildren(...similar.map((h) => card(h, open)));
      justify(d.similar);
      d.similarStatus.textContent = similar.length ? "" : MESSAGES.no_results.join(" ");
    } catch (err) {
      if (gen !== detailGen) return;
      const [ko, en] = MESSAGES[err.code] || MESSAGES.internal;
      d.similarStatus.textContent = `${ko} ${en}`;
    }
  })();
}

// A photo by its id (a shared URL, or Forward): from the results when it is there.
async function openPhotoById(id) {
  const index = state.hits.findIndex((h) => h.id === id);
  if (index >= 0) {
    openViewer(state.hits, index, "grid", { push: false });
    return;
  }
  try {
    const photo = await api(`/api/photos/${id}`);
    if (els.detail.open && viewer.hit && viewer.hit.id === id) return;
    openViewer([photo], 0, "single", { push: false });
  } catch (err) {
    showMessage(err.code, err.message);
    syncUrl();
  }
}

// Close the viewer; resolves once the URL no longer names the photo.
function closeViewer() {
  if (els.detail.open) {
    els.detail.close();
    viewerClosed(); // now, not when the close event comes: the caller may change the URL next
  }
  return viewer.leaving || Promise.resolve();
}

// However it closed (closeViewer, Back, the browser's own Esc): the URL and the focus follow.
function viewerClosed() {
  const hit = viewer.hit;
  if (!hit) return;
  detailGen += 1;
  viewer.hit = null;
  delete els.detail.dataset.photo;
  if (viewer.source === "grid") {
    const button = els.grid.querySelector(`.photo[data-id="${hit.id}"]`);
    if (button) button.focus({ preventScroll: true });
    if (button) button.scrollIntoView({ block: "nearest" });
  }
  if (history.state && history.state.viewer) {
    // The entry opening pushed: going back to the one before it is what Back would do.
    viewer.leaving = new Promise((resolve) => {
      window.addEventListener("popstate", () => {
        viewer.leaving = null;
        resolve();
      }, { once: true });
    });
    history.back();
  } else {
    syncUrl(); // opened by a shared URL: the same entry, without the photo
  }
}

els.detail.addEventListener("close", viewerClosed);

window.addEventListener("popstate", () => {
  const id = Number(new URLSearchParams(location.search).get("photo")) || 0;
  if (!id && els.detail.open) closeViewer(); // Back while the viewer is open
  else if (id && !els.detail.open && !dupes.open) openPhotoById(id); // Forward
});

els.detailClose.addEventListener("click", closeViewer);
els.detailPrev.addEventListener("click", () => step(-1));
els.detailNext.addEventListener("click", () => step(1));
els.detail.addEventListener("click", (event) => {
  if (event.target === els.detail) closeViewer(); // a click on the backdrop
});

// Keys: ← / → and Esc in the viewer; "/" focuses the search box unless one is typing.
function typing(target) {
  if (!target || !target.tagName) return false;
  if (target.isContentEditable) return true;
  if (target.tagName === "TEXTAREA" || target.tagName === "SELECT") return true;
  if (target.tagName !== "INPUT") return false;
  return !["button", "checkbox", "radio", "range", "color", "file", "submit", "reset"]
    .includes(target.type);
}

document.addEventListener("keydown", (event) => {
  if (event.defaultPrevented || event.isComposing || event.altKey || event.ctrlKey
      || event.metaKey) return;
  if (els.detail.open) {
    if (event.key === "ArrowRight" || event.key === "ArrowLeft") {
      event.preventDefault();
      step(event.key === "ArrowRight" ? 1 : -1);
    } else if (event.key === "Escape") {
      event.preventDefault();
      closeViewer();
    }
    return;
  }
  if (event.key === "/" && !typing(event.target)) {
    event.preventDefault();
    if (dupes.open) closeDupes();
    els.q.focus();
    els.q.select();
  }
});

// -- duplicates -------------------------------------------------------------------------
// Groups come largest first, the suggested keeper first. The user may pick another keeper;
// "set aside" sends the group as shown (its ids, the keeper, the list's filters) so the
// server can refuse a group that changed meanwhile; undo restores exactly what was moved.

const DUPES_PAGE = 50;
const KIND_LABELS = {
  identical: "똑같은 파일 / identical",
  same: "같은 사진 / same picture",
  similar: "비슷한 사진 / similar shots",
};
const dupes = { open: false, gen: 0, next: 0, total: 0, folder: "" };

function dupesQuery(extra) {
  const p = new URLSearchParams({ kind: els.dupesKind.value, ...extra });
  const under = els.under.value.trim();
  if (under) p.set("under", under);
  return p.toString();
}

function showDupesMessage(code, detail) {
  fillMessage(els.dupesMessage, code, detail, false);
}

function openDupes() {
  dupes.open = true;
  els.searchView.hidden = true;
  els.dupesView.hidden = false;
  els.dupesOpen.setAttribute("aria-pressed", "true");
  loadDupes();
}

function closeDupes() {
  dupes.open = false;
  dupes.gen += 1;
  els.dupesView.hidden = true;
  els.searchView.hidden = false;
  els.dupesOpen.setAttribute("aria-pressed", "false");
  syncUrl();
}

async function loadDupes({ append = false } = {}) {
  dupes.gen += 1;
  const gen = dupes.gen;
  if (!append) {
    dupes.next = 0;
    els.dupesList.replaceChildren();
    els.dupesMessage.hidden = true;
    els.dupesMore.hidden = true;
    els.dupesStatus.textContent = "찾는 중… / Looking for duplicates…";
  }
  syncUrl();
  try {
    const page = await api(`/api/duplicates?${dupesQuery({ limit: DUPES_PAGE, offset: dupes.next })}`);
    if (gen !== dupes.gen) return;
    dupes.total = page.total;
    dupes.folder = page.aside_folder;
    const start = dupes.next;
    els.dupesList.append(...page.groups.map((g, i) => dupeGroup(g, start + i)));
    dupes.next = start + page.groups.length;
    els.dupesMore.hidden = dupes.next >= page.total;
    els.dupesStatus.textContent = page.total
      ? `${page.total.toLocaleString()}묶음 / groups`
      : "";
    if (!page.total) showDupesMessage("no_duplicates");
  } catch (err) {
    if (gen !== dupes.gen) return;
    els.dupesStatus.textContent = "";
    showDupesMessage(err.code, err.message);
  } finally {
    if (gen === dupes.gen) els.dupesList.dataset.loaded = String(dupes.gen);
  }
}

function dupePhoto(photo, group, n) {
  const li = document.createElement("li");
  li.className = "dupe-photo";
  li.dataset.id = photo.id;
  li.dataset.relpath = photo.relpath;
  const label = document.createElement("label");
  const radio = document.createElement("input");
  radio.type = "radio";
  radio.name = `keep-${n}`;
  radio.value = photo.id;
  radio.checked = photo.id === group.keep_id;
  radio.setAttribute("aria-label", `남기기 / Keep ${photo.relpath}`);
  const img = document.createElement("img");
  img.loading = "lazy";
  img.decoding = "async";
  img.alt = photo.relpath;
  img.src = photo.thumbnail;
  const name = document.createElement("span");
  name.className = "name";
  name.textContent = photo.relpath;
  name.title = photo.path;
  const facts = document.createElement("span");
  facts.className = "facts";
  facts.textContent = `${photo.width} × ${photo.height} · ${humanSize(photo.bytes)} · `
    + `${formatDate(photo.taken_at)} · ${photo.similarity.toFixed(3)}`;
  label.append(img, name, facts);
  if (photo.id === group.keep_id) {
    const badge = document.createElement("span");
    badge.className = "badge";
    badge.textContent = `추천 / suggested: ${group.reason}`;
    label.append(badge);
  }
  const keepRow = document.createElement("span");
  keepRow.append(radio, document.createTextNode(" 남기기 / keep"));
  label.prepend(keepRow);
  li.append(label);
  return li;
}

function dupeGroup(group, n) {
  const li = document.createElement("li");
  li.className = "dupe-group";
  li.dataset.kind = group.kind;
  const h = document.createElement("h3");
  const kind = document.createElement("span");
  kind.className = "kind";
  kind.textContent = KIND_LABELS[group.kind] || group.kind;
  const why = document.createElement("span");
  why.className = "why";
  why.textContent = ` ${group.photos.length}장 / photos`;
  h.append(kind, why);
  const list = document.createElement("ul");
  list.className = "dupe-photos";
  list.append(...group.photos.map((p) => dupePhoto(p, group, n)));
  const actions = document.createElement("p");
  actions.className = "dupe-actions";
  const button = document.createElement("button");
  button.type = "button";
  button.className = "dupe-aside";
  const others = group.photos.length - 1;
  button.textContent = `나머지 ${others}장 치우기 / Set the other ${others} aside`;
  const note = document.createElement("span");
  note.className = "note";
  actions.append(button, note);
  li.append(h, list, actions);

  const markKeeper = () => {
    const keep = Number(list.querySelector("input:checked").value);
    for (const item of list.children) {
      item.classList.toggle("keep", Number(item.dataset.id) === keep);
    }
  };
  list.addEventListener("change", markKeeper);
  markKeeper();
  button.addEventListener("click", () => setAsideGroup(group, li, list, actions, note, button));
  return li;
}

async function setAsideGroup(group, li, list, actions, note, button, crossFilesystem = false) {
  const keep = Number(list.querySelector("input:checked").value);
  const body = {
    photos: group.photos.map((p) => p.id),
    keep,
    kind: els.dupesKind.value,
    cross_filesystem: crossFilesystem,
  };
  const under = els.under.value.trim();
  if (under) body.under = under;
  button.disabled = true;
  note.className = "note";
  note.textContent = "옮기는 중… / Moving…";
  try {
    const report = await api("/api/duplicates/set-aside", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    const moved = new Set(report.ids);
    for (const item of list.children) {
      item.classList.toggle("aside", moved.has(Number(item.dataset.id)));
      item.querySelector("input").disabled = true;
    }
    // The same photos in other groups (a "similar" group may hold them) are gone too.
    for (const item of els.dupesList.querySelectorAll(".dupe-photo")) {
      if (!list.contains(item) && moved.has(Number(item.dataset.id))) item.classList.add("aside");
    }
    li.classList.add("done");
    button.hidden = true;
    let text = `${report.ids.length}장을 치웠어요 / set aside → ${report.folder}`;
    if (report.skipped.length) {
      text += ` · 그대로 둔 사진 / left in place: `
        + report.skipped.map((s) => `${s.path ?? `#${s.id}`} (${s.reason})`).join(", ");
    }
    note.textContent = text;
    const undo = document.createElement("button");
    undo.type = "button";
    undo.className = "dupe-undo";
    undo.textContent = "되돌리기 / Undo";
    undo.addEventListener("click", () => undoAside(report.ids, undo, note));
    actions.append(undo);
  } catch (err) {
    button.disabled = false;
    note.className = "note error";
    note.textContent = `${messageText(err.code)} ${err.code === "internal" ? "" : err.message}`;
    if (err.code === "stale_group") {
      await loadDupes();
      showDupesMessage("stale_group");
    } else if (err.code === "cross_filesystem" && !crossFilesystem
               && window.confirm(`${err.message}\n\n복사해서 옮길까요? / Copy them?`)) {
      await setAsideGroup(group, li, list, actions, note, button, true);
    }
  }
}

async function undoAside(ids, undo, note) {
  undo.disabled = true;
  note.className = "note";
  note.textContent = "되돌리는 중… / Putting back…";
  try {
    const report = await api("/api/duplicates/restore", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ photos: ids }),
    });
    await loadDupes();
    els.dupesStatus.textContent += ` · ${report.ids.length}장을 되돌렸어요 / put back`;
  } catch (err) {
    undo.disabled = false;
    note.className = "note error";
    note.textContent = `${messageText(err.code)} ${err.message}`;
  }
}

els.dupesOpen.addEventListener("click", () => (dupes.open ? closeDupes() : openDupes()));
els.dupesBack.addEventListener("click", closeDupes);
els.dupesKind.addEventListener("change", () => loadDupes());
els.dupesMore.addEventListener("click", () => loadDupes({ append: true }));

// -- what the query was understood as: chips, places, sort --------------------------------
// A text search's first page says which dates, places and cameras the query named; each is a
// chip, and removing one searches again with the query the server gives for it (`without`).

const understoodEls = { sort: $("sort"), chips: $("understood"), places: $("places"),
                        placesBox: $("places-box") };
const FACT_LABELS = { date: "날짜 / date", place: "장소 / place", camera: "카메라 / camera" };

// Every API answer passes here; a search's first page (re)draws the chips.
function noteUnderstood(body) {
  if (!body || !("results" in body) || body.offset !== 0) return;
  showUnderstood(body.understood);  // none for a photo's search: the chips go
}

function showUnderstood(understood) {
  const box = understoodEls.chips;
  const facts = (understood && understood.facts) || [];
  box.replaceChildren(...facts.map((fact) => {
    const chip = document.createElement("button");
    chip.type = "button";
    chip.className = "chip";
    chip.dataset.kind = fact.kind;
    chip.title = `${FACT_LABELS[fact.kind] || fact.kind}: ‘${fact.words}’ — 빼고 다시 찾기 / search without it`;
    chip.textContent = `${fact.value} ✕`;
    chip.addEventListener("click", () => {
      els.q.value = fact.without;
      if (!fact.without.trim()) showUnderstood(null);  // the welcome page: no chips
      runText(true);
    });
    return chip;
  }));
  box.hidden = facts.length === 0;
}

async function loadPlaces() {
  let places;
  try {
    places = await api("/api/places");
  } catch {
    return;
  }
  understoodEls.places.replaceChildren(...places.map((p) => {
    const li = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.className = "link";
    button.dataset.place = p.place;
    button.textContent = `${p.place} (${p.photos.toLocaleString()})`;
    button.addEventListener("click", () => {
      els.q.value = p.place;
      understoodEls.placesBox.open = false;
      runText(true);
    });
    li.append(button);
    return li;
  }));
  understoodEls.placesBox.hidden = places.length === 0;
}

understoodEls.sort.value = new URLSearchParams(location.search).get("sort") || "relevance";
if (!understoodEls.sort.value) understoodEls.sort.value = "relevance";  // an unknown one
understoodEls.sort.addEventListener("change", () => {
  if (state.mode) startSearch(state.mode);
  else syncUrl();
});

// -- start ----------------------------------------------------------------------------------

function resetToWelcome() {
  state.gen += 1;
  state.mode = null;
  state.key = "";
  state.loading = false;
  clearResults();
  state.next = null;
  hideMessage();
  setStatus("한국어로 찾아보세요. 사진을 끌어다 놓으면 비슷한 사진을 찾아요. / "
            + "Search in Korean or English, or drop a photo to find similar ones.");
  syncUrl();
}

// The URL of what the page shows now: the search, its filters, the photo open in the viewer.
function urlNow() {
  const p = new URLSearchParams(filters());
  if (dupes.open) {
    p.set("view", "duplicates");
    if (els.dupesKind.value !== "all") p.set("kind", els.dupesKind.value);
    return `?${p.toString()}`;
  }
  if (state.mode && state.mode.kind === "text") p.set("q", state.mode.q);
  if (state.mode && state.mode.kind === "similar") p.set("similar", state.mode.id);
  if (els.detail.open && viewer.hit) p.set("photo", viewer.hit.id);
  const query = p.toString();
  return query ? `?${query}` : location.pathname;
}

function syncUrl() {
  history.replaceState(history.state, "", urlNow());
}

async function loadLibrary() {
  try {
    const info = await api("/api/info");
    els.library.textContent = `사진 ${info.photos.toLocaleString()}장 · ${info.model.split("/").pop()} (${info.precision})`;
    if (!info.photos) {
      showMessage("empty_library");
      return false;
    }
  } catch (err) {
    showMessage(err.code, err.code === "no_library" ? "" : err.message);
    return false;
  }
  api("/api/folders").then((folders) => {
    els.folders.replaceChildren(...folders.map((f) => {
      const option = document.createElement("option");
      option.value = f.folder;
      option.label = `${f.folder} (${f.photos})`;
      return option;
    }));
  }).catch(() => {});
  loadPlaces();
  return true;
}

async function main() {
  const url = new URLSearchParams(location.search);
  for (const name of ["under", "after", "before"]) els[name].value = url.get(name) || "";
  resetToWelcome();
  const ok = await loadLibrary();
  document.body.dataset.ready = "1";
  if (!ok) {
    setStatus("");
    return;
  }
  if (url.get("view") === "duplicates") {
    if (KIND_LABELS[url.get("kind")]) els.dupesKind.value = url.get("kind");
    openDupes();
    return;
  }
  let searched = Promise.resolve();
  if (url.get("q")) {
    els.q.value = url.get("q");
    searched = runText(true);
  } else if (url.get("similar")) {
    const id = Number(url.get("similar"));
    searched = startSearch({ kind: "similar", id, label: `≈ #${id}` });
  }
  els.q.focus();
  const photo = Number(url.get("photo")) || 0;
  if (photo) {
    await searched; // a shared URL: its search first, then the photo, among its results
    openPhotoById(photo);
  }
}

main();
