// The API docs page (/api/docs): reads the server's own /api/openapi.json and lists each route
// with its parameters, request body and responses. No script, font or style from elsewhere,
// so it works with no network at all.
"use strict";

const METHODS = ["get", "post", "put", "patch", "delete"];
const TAG_LABELS = {
  search: "검색 / Search",
  photos: "사진 / Photos",
  library: "라이브러리 / Library",
  duplicates: "중복 사진 / Duplicates",
};
const WHERE = { query: "쿼리 / query", path: "경로 / path", header: "헤더 / header" };

const $ = (id) => document.getElementById(id);

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v);
  }
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

// A description as paragraphs, `code` spans kept as code.
function prose(text) {
  const out = [];
  for (const para of String(text || "").split(/\n\s*\n/)) {
    if (!para.trim()) continue;
    const p = el("p", { class: "desc" });
    String(para).replace(/\s*\n\s*/g, " ").split(/(`[^`]+`)/).forEach((part) => {
      if (part.startsWith("`") && part.endsWith("`") && part.length > 1) {
        p.append(el("code", { text: part.slice(1, -1) }));
      } else if (part) {
        p.append(part);
      }
    });
    out.push(p);
  }
  return out;
}

const refName = (ref) => ref.split("/").pop();
const anchor = (name) => `schema-${name}`;

// A schema as a short type: `integer`, `string | null`, `list[Hit]` (schema names are links).
function typeNode(schema) {
  const span = el("span", { class: "type" });
  fillType(span, schema || {});
  return span;
}

function fillType(into, schema) {
  if (schema.$ref) {
    const name = refName(schema.$ref);
    into.append(el("a", { href: `#${anchor(name)}`, text: name }));
    return;
  }
  const alternatives = schema.anyOf || schema.oneOf;
  if (alternatives) {
    alternatives.forEach((alt, i) => {
      if (i) into.append(" | ");
      fillType(into, alt);
    });
    return;
  }
  if (schema.enum) {
    into.append(schema.enum.map((v) => JSON.stringify(v)).join(" | "));
    return;
  }
  if (schema.const !== undefined) {
    into.append(JSON.stringify(schema.const));
    return;
  }
  if (schema.type === "array") {
    into.append("list[");
    fillType(into, schema.items || {});
    into.append("]");
    return;
  }
  let text = schema.type || "any";
  if (schema.format) text += ` (${schema.format})`;
  into.append(text);
}

// Limits and defaults, gathered from a schema and its alternatives.
function limits(schema) {
  const parts = [];
  const each = [schema, ...(schema.anyOf || schema.oneOf || [])];
  for (const s of each) {
    if (s.minimum !== undefined && s.minimum > -1e15) parts.push(`≥ ${s.minimum}`);
    if (s.maximum !== undefined && s.maximum < 1e15) parts.push(`≤ ${s.maximum}`);
    if (s.minLength !== undefined) parts.push(`길이 / length ≥ ${s.minLength}`);
    if (s.maxLength !== undefined) parts.push(`길이 / length ≤ ${s.maxLength}`);
    if (s.minItems !== undefined) parts.push(`항목 / items ≥ ${s.minItems}`);
    if (s.maxItems !== undefined) parts.push(`항목 / items ≤ ${s.maxItems}`);
    if (s.pattern) parts.push(`pattern ${s.pattern}`);
  }
  if (schema.default !== undefined) parts.push(`기본값 / default ${JSON.stringify(schema.default)}`);
  return parts.join(", ");
}

function table(headings, rows) {
  const head = el("tr", {}, ...headings.map((h) => el("th", { text: h })));
  return el("table", {}, el("thead", {}, head), el("tbody", {}, ...rows));
}

function parametersBlock(params) {
  if (!params.length) return null;
  const rows = params.map((p) => {
    const schema = p.schema || {};
    const name = el("td", {}, el("code", { text: p.name }));
    if (p.required) name.append(el("span", { class: "required", text: " 필수 / required" }));
    return el(
      "tr",
      {},
      name,
      el("td", { text: WHERE[p.in] || p.in }),
      el("td", {}, typeNode(schema)),
      el("td", {}, ...prose(p.description || schema.description), limitsNode(schema)),
    );
  });
  return el(
    "div",
    { class: "block" },
    el("h4", { text: "매개변수 / Parameters" }),
    table(["이름 / Name", "위치 / In", "형식 / Type", "설명 / Description"], rows),
  );
}

function limitsNode(schema) {
  const text = limits(schema);
  return text ? el("p", { class: "limits", text }) : null;
}

function contentList(content) {
  const items = Object.entries(content || {}).map(([type, media]) => {
    const li = el("li", {}, el("code", { text: type }));
    if (media.schema) li.append(" — ", typeNode(media.schema));
    return li;
  });
  return items.length ? el("ul", { class: "content" }, ...items) : null;
}

function bodyBlock(body) {
  if (!body) return null;
  const title = el("h4", { text: "요청 본문 / Request body" });
  if (body.required) title.append(el("span", { class: "required", text: " 필수 / required" }));
  return el("div", { class: "block" }, title, ...prose(body.description), contentList(body.content));
}

function responsesBlock(responses) {
  const rows = Object.entries(responses || {}).map(([status, r]) => el(
    "tr",
    {},
    el("td", {}, el("code", { class: `status-code s${status[0]}`, text: status })),
    el("td", {}, ...prose(r.description), contentList(r.content)),
  ));
  if (!rows.length) return null;
  return el(
    "div",
    { class: "block" },
    el("h4", { text: "응답 / Responses" }),
    table(["상태 / Status", "내용 / Content"], rows),
  );
}

function operation(path, method, op) {
  const id = `${method}-${path}`;
  const head = el(
    "h3",
    {},
    el("span", { class: `method ${method}`, text: method.toUpperCase() }),
    " ",
    el("code", { class: "path", text: path }),
  );
  if (op.summary) head.append(el("span", { class: "op-summary", text: ` ${op.summary}` }));
  return el(
    "section",
    { class: "route", id },
    head,
    ...prose(op.description),
    parametersBlock(op.parameters || []),
    bodyBlock(op.requestBody),
    responsesBlock(op.responses),
  );
}

function schemaSection(name, schema) {
  const required = new Set(schema.required || []);
  const rows = Object.entries(schema.properties || {}).map(([prop, s]) => {
    const cell = el("td", {}, el("code", { text: prop }));
    if (required.has(prop)) cell.append(el("span", { class: "required", text: " 필수 / required" }));
    return el(
      "tr",
      {},
      cell,
      el("td", {}, typeNode(s)),
      el("td", {}, ...prose(s.description), limitsNode(s)),
    );
  });
  return el(
    "section",
    { class: "schema", id: anchor(name) },
    el("h3", {}, el("code", { text: name })),
    ...prose(schema.description),
    rows.length ? table(["필드 / Field", "형식 / Type", "설명 / Description"], rows) : null,
  );
}

function render(spec) {
  const info = spec.info || {};
  document.title = `${info.title || "API"} — API`;
  $("api-version").textContent = info.version ? `v${info.version}` : "";
  $("api-summary").textContent = info.summary || info.description || "";

  // Routes grouped by tag, in the document's order.
  const groups = new Map();
  for (const [path, item] of Object.entries(spec.paths || {})) {
    for (const method of METHODS) {
      const op = item[method];
      if (!op) continue;
      const tag = (op.tags && op.tags[0]) || "other";
      if (!groups.has(tag)) groups.set(tag, []);
      groups.get(tag).push([path, method, op]);
    }
  }
  const routes = $("api-routes");
  const toc = $("api-toc");
  let count = 0;
  for (const [tag, ops] of groups) {
    const title = TAG_LABELS[tag] || tag;
    const list = el("ul");
    toc.append(el("h2", { text: title }), list);
    const section = el("section", { class: "tag", id: `tag-${tag}` }, el("h2", { text: title }));
    for (const [path, method, op] of ops) {
      section.append(operation(path, method, op));
      const link = el("a", { href: `#${method}-${path}` },
        el("span", { class: `method ${method}`, text: method.toUpperCase() }), " ", path);
      list.append(el("li", {}, link));
      count += 1;
    }
    routes.append(section);
  }
  const schemas = Object.entries((spec.components && spec.components.schemas) || {});
  $("api-schema-list").append(...schemas.map(([name, s]) => schemaSection(name, s)));
  $("api-schemas").hidden = !schemas.length;
  $("api-status").textContent = `경로 ${count}개 / ${count} routes`;
  document.body.dataset.ready = "1";
  if (location.hash) {
    const target = document.getElementById(decodeURIComponent(location.hash.slice(1)));
    if (target) target.scrollIntoView();
  }
}

async function main() {
  try {
    const res = await fetch("/api/openapi.json");
    if (!res.ok) throw new Error(`${res.status} ${res.statusText}`);
    render(await res.json());
  } catch (err) {
    const status = $("api-status");
    status.className = "status error";
    status.textContent = `API 문서를 불러올 수 없어요. / The API description cannot be loaded. (${err})`;
    document.body.dataset.ready = "error";
  }
}

main();
