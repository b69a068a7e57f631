// koclip-search web page: search box (IME-safe), thumbnail grid with infinite scroll,
// photo detail with similar photos, search by a dropped or picked photo, folder/date filters,
// and the Duplicates view (choose a keeper, set the rest aside, undo).
"use strict";

const PAGE = 40;
const SIMILAR_IN_DETAIL = 12;
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
  detailName: $("detail-name"), detailPath: $("detail-path"), detailDate: $("detail-date"),
  detailSize: $("detail-size"), detailOriginal: $("detail-original"), detailMore: $("detail-more"),
  similar: $("similar"), similarStatus: $("similar-status"),
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
  upload_expired: ["사진을 다시 올려 주세요.", "Please drop the photo again."],
  model_mismatch: ["라이브러리와 다른 모델이에요.", "The model differs from the library's."],
  model_error: ["모델 파일을 읽을 수 없어요.", "The model's files cannot be read."],
  library_error: ["라이브러리를 읽을 수 없어요.", "The library cannot be read."],
  not_found: ["사진을 찾을 수 없어요.", "The photo was not found."],
  unreadable: ["사진 파일을 읽을 수 없어요.", "The photo file cannot be read."],
  network: ["서버에 연결할 수 없어요.", "Cannot reach the server."],
  stale_group: ["그새 라이브러리가 바뀌어 이 묶음이 달라졌어요. 목록을 새로 불러왔어요.",
                "The library changed and this group is no longer the same; the list was reloaded."],
  library_busy: ["다른 프로그램이 라이브러리에 쓰는 중이에요. 끝난 뒤 다시 해 주세요.",
                 "Another program is writing to the library; try again when it is done."],
  set_aside_refused: ["사진을 옮길 수 없어요.", "The photos cannot be moved."],
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

async function api(url, options = {}) {
  let res;
  try {
    res = await fetch(url, options);
  } catch (err) {
    throw new ApiError("network", String(err), 0);
  }
  const body = await res.json().catch(() => null);
  if (!res.ok) {
    throw new ApiError((body && body.code) || "internal", (body && body.error) || res.statusText,
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
  started: 0,
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

function formatDate(iso) {
  if (!iso) return "";
  return iso.slice(0, 16).replace("T", " ");
}

function card(hit, onOpen) {
  const li = document.createElement("li");
  li.className = "card";
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

function describe(mode) {
  if (mode.kind === "text") return `‘${mode.q}’`;
  return mode.label;
}

async function startSearch(mode, { force = false } = {}) {
  const key = modeKey(mode);
  if (!force && key === state.key) return;
  state.mode = mode;
  state.key = key;
  state.gen += 1;
  state.next = 0;
  state.count = 0;
  state.loading = false;
  state.started = performance.now();
  els.grid.replaceChildren();
  hideMessage();
  window.scrollTo({ top: 0 });
  syncUrl();
  await loadMore();
}

async function loadMore() {
  if (!state.mode || state.loading || state.next === null) return;
  const gen = state.gen;
  const mode = state.mode;
  state.loading = true;
  els.more.hidden = state.count === 0;
  if (state.count === 0) setStatus("찾는 중… / Searching…");
  try {
    const page = await api(pageUrl(mode, state.next, PAGE));
    if (gen !== state.gen) return;
    renderPage(page);
  } catch (err) {
    if (gen !== state.gen) return;
    state.next = null;
    setStatus("");
    showMessage(err.code, err.message);
  } finally {
    if (gen === state.gen) {
      state.loading = false;
      els.more.hidden = true;
    }
  }
  if (gen === state.gen) fillViewport();
}

function renderPage(page) {
  const items = page.results.map((hit) => card(hit, openDetail));
  els.grid.append(...items);
  state.count += page.results.length;
  state.next = page.next_offset;
  const secs = ((performance.now() - state.started) / 1000).toFixed(2);
  if (state.count === 0) {
    setStatus(describe(state.mode));
    showMessage("no_results");
    return;
  }
  const more = state.next === null ? "" : "+";
  setStatus(`${describe(state.mode)} — ${state.count}${more}장 / photos · ${secs} s`);
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
    return;
  }
  clearCurrent();
  if (dupes.open) closeDupes();
  startSearch({ kind: "text", q }, { force });
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
    state.next = 0;
    state.count = 0;
    state.started = performance.now() - 1;
    els.grid.replaceChildren();
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

// -- detail view with similar photos ------------------------------------------------------

let detailGen = 0;

function humanSize(bytes) {
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(0)} KB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
}

async function openDetail(hit) {
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
  d.detailMore.onclick = () => {
    d.detail.close();
    clearCurrent();
    setCurrent(hit.thumbnail, hit.relpath);
    startSearch({ kind: "similar", id: hit.id, label: `≈ ${hit.relpath}` });
  };
  d.similar.replaceChildren();
  d.similarStatus.textContent = "찾는 중… / Searching…";
  if (!d.detail.open) d.detail.showModal();
  d.detail.scrollTop = 0;
  try {
    const [photo, page] = await Promise.all([
      api(`/api/photos/${hit.id}`),
      api(`/api/photos/${hit.id}/similar?${params({ k: SIMILAR_IN_DETAIL })}`),
    ]);
    if (gen !== detailGen) return;
    const source = photo.taken_at_source === "exif" ? "촬영 / taken" : "파일 시각 / file time";
    d.detailDate.textContent = `${formatDate(photo.taken_at)} (${source})`;
    d.detailSize.textContent = `${photo.width} × ${photo.height} · ${humanSize(photo.size)}`;
    d.similar.replaceChildren(...page.results.map((h) => card(h, openDetail)));
    d.similarStatus.textContent = page.results.length ? "" : MESSAGES.no_results.join(" ");
  } catch (err) {
    if (gen !== detailGen) return;
    const [ko, en] = MESSAGES[err.code] || MESSAGES.internal;
    d.similarStatus.textContent = `${ko} ${en}`;
  }
}

els.detailClose.addEventListener("click", () => els.detail.close());
els.detail.addEventListener("click", (event) => {
  if (event.target === els.detail) els.detail.close(); // a click on the backdrop
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

async function setAsideGroup(group, li, list, actions, note, button) {
  const keep = Number(list.querySelector("input:checked").value);
  const body = {
    photos: group.photos.map((p) => p.id),
    keep,
    kind: els.dupesKind.value,
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
        + report.skipped.map((s) => `${s.path} (${s.reason})`).join(", ");
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
  state.next = null;
  els.grid.replaceChildren();
  hideMessage();
  setStatus("한국어로 찾아보세요. 사진을 끌어다 놓으면 비슷한 사진을 찾아요. / "
            + "Search in Korean or English, or drop a photo to find similar ones.");
  syncUrl();
}

function syncUrl() {
  const p = new URLSearchParams(filters());
  if (dupes.open) {
    p.set("view", "duplicates");
    if (els.dupesKind.value !== "all") p.set("kind", els.dupesKind.value);
    history.replaceState(null, "", `?${p.toString()}`);
    return;
  }
  if (state.mode && state.mode.kind === "text") p.set("q", state.mode.q);
  if (state.mode && state.mode.kind === "similar") p.set("similar", state.mode.id);
  const query = p.toString();
  history.replaceState(null, "", query ? `?${query}` : location.pathname);
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
  if (url.get("q")) {
    els.q.value = url.get("q");
    runText(true);
  } else if (url.get("similar")) {
    const id = Number(url.get("similar"));
    startSearch({ kind: "similar", id, label: `≈ #${id}` });
  }
  els.q.focus();
}

main();
