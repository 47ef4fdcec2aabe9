/* A minimal DOM for node (no jsdom): enough of Document/Element/Text for the graph scripts, plus
 * querySelectorAll (tag, .class, [attr], [attr="v"], descendant combinator) and click/keydown dispatch
 * for the tests. Setting innerHTML/outerHTML or calling insertAdjacentHTML throws: the renderers must
 * build everything from nodes. */
"use strict";

class Node {
  constructor(doc) { this.ownerDocument = doc; this.parentNode = null; this.childNodes = []; }
  get firstChild() { return this.childNodes[0] || null; }
  get lastChild() { return this.childNodes[this.childNodes.length - 1] || null; }
  get nextSibling() {
    if (!this.parentNode) return null;
    const s = this.parentNode.childNodes;
    return s[s.indexOf(this) + 1] || null;
  }
  appendChild(child) {
    if (child.nodeType === 11) { for (const c of [...child.childNodes]) this.appendChild(c); return child; }
    if (child.parentNode) child.parentNode.removeChild(child);
    child.parentNode = this;
    this.childNodes.push(child);
    return child;
  }
  insertBefore(child, ref) {
    if (ref === null) return this.appendChild(child);
    if (child.parentNode) child.parentNode.removeChild(child);
    const i = this.childNodes.indexOf(ref);
    if (i < 0) throw new Error("insertBefore: not a child");
    child.parentNode = this;
    this.childNodes.splice(i, 0, child);
    return child;
  }
  removeChild(child) {
    const i = this.childNodes.indexOf(child);
    if (i < 0) throw new Error("removeChild: not a child");
    this.childNodes.splice(i, 1);
    child.parentNode = null;
    return child;
  }
  replaceChild(newChild, old) {
    const i = this.childNodes.indexOf(old);
    if (i < 0) throw new Error("replaceChild: not a child");
    if (newChild.parentNode) newChild.parentNode.removeChild(newChild);
    this.childNodes[this.childNodes.indexOf(old)] = newChild;
    newChild.parentNode = this;
    old.parentNode = null;
    return old;
  }
  get textContent() { return this.childNodes.map((c) => c.textContent).join(""); }
  set textContent(v) {
    for (const c of this.childNodes) c.parentNode = null;
    this.childNodes = [];
    if (v !== "" && v !== null && v !== undefined) this.appendChild(this.ownerDocument.createTextNode(String(v)));
  }
}

class Text extends Node {
  constructor(doc, data) { super(doc); this.nodeType = 3; this.data = String(data); }
  get textContent() { return this.data; }
  set textContent(v) { this.data = String(v); }
}

class Element extends Node {
  constructor(doc, tag, ns) {
    super(doc);
    this.nodeType = 1;
    this.tagName = ns ? tag : tag.toUpperCase();
    this.localName = tag.toLowerCase();
    this.namespaceURI = ns || "http://www.w3.org/1999/xhtml";
    this.attributes = new Map();
    this.listeners = {};
  }
  setAttribute(name, value) {
    if (/^on/i.test(name)) throw new Error("event handler attribute set: " + name);
    this.attributes.set(String(name), String(value));
  }
  getAttribute(name) { return this.attributes.has(name) ? this.attributes.get(name) : null; }
  hasAttribute(name) { return this.attributes.has(name); }
  removeAttribute(name) { this.attributes.delete(name); }
  get id() { return this.getAttribute("id") || ""; }
  get children() { return this.childNodes.filter((c) => c.nodeType === 1); }
  set innerHTML(v) { throw new Error("innerHTML set"); }
  get innerHTML() { throw new Error("innerHTML read"); }
  set outerHTML(v) { throw new Error("outerHTML set"); }
  insertAdjacentHTML() { throw new Error("insertAdjacentHTML"); }
  addEventListener(type, fn) { (this.listeners[type] = this.listeners[type] || []).push(fn); }
  removeEventListener(type, fn) {
    const l = this.listeners[type] || [];
    const i = l.indexOf(fn);
    if (i >= 0) l.splice(i, 1);
  }
  listenerCount() { return Object.values(this.listeners).reduce((n, l) => n + l.length, 0); }
  dispatch(type, extra) {
    let stopped = false;
    const event = Object.assign({ type, target: this, stopPropagation() { stopped = true; }, preventDefault() {} }, extra || {});
    for (let cur = this; cur && !stopped; cur = cur.parentNode) {
      for (const fn of [...((cur.listeners && cur.listeners[type]) || [])]) fn.call(cur, event);
    }
  }
  click() { this.dispatch("click"); }
  querySelectorAll(selector) { return queryAll(this, selector); }
  querySelector(selector) { return queryAll(this, selector)[0] || null; }
  get className() { return this.getAttribute("class") || ""; }
}

class Document extends Node {
  constructor() {
    super(null);
    this.ownerDocument = null;
    this.nodeType = 9;
    this.documentElement = new Element(this, "html");
    this.head = new Element(this, "head");
    this.body = new Element(this, "body");
    this.documentElement.appendChild(this.head);
    this.documentElement.appendChild(this.body);
    this.appendChild(this.documentElement);
  }
  createElement(tag) { return new Element(this, tag); }
  createElementNS(ns, tag) { return new Element(this, tag, ns); }
  createTextNode(text) { return new Text(this, text); }
  getElementById(id) { return queryAll(this.documentElement, "*").find((e) => e.getAttribute("id") === id) || null; }
  querySelectorAll(selector) { return queryAll(this.documentElement, selector, true); }
  querySelector(selector) { return this.querySelectorAll(selector)[0] || null; }
}

function parseCompound(text) {
  const re = /^([a-zA-Z*][\w-]*)?((?:\.[\w-]+|\[[^\]]+\])*)$/;
  const m = re.exec(text);
  if (!m) throw new Error("unsupported selector: " + text);
  const tests = [];
  if (m[1] && m[1] !== "*") tests.push((e) => e.localName === m[1].toLowerCase());
  for (const part of m[2].match(/\.[\w-]+|\[[^\]]+\]/g) || []) {
    if (part[0] === ".") {
      const cls = part.slice(1);
      tests.push((e) => (" " + (e.getAttribute("class") || "") + " ").includes(" " + cls + " "));
    } else {
      const am = /^\[([\w-]+)(?:=["']?(.*?)["']?)?\]$/.exec(part);
      if (!am) throw new Error("unsupported attribute selector: " + part);
      tests.push(am[2] === undefined ? (e) => e.hasAttribute(am[1]) : (e) => e.getAttribute(am[1]) === am[2]);
    }
  }
  return (e) => e.nodeType === 1 && tests.every((t) => t(e));
}

function queryAll(root, selector, includeRoot) {
  const chain = selector.trim().split(/\s+/).map(parseCompound);
  const out = [];
  const walk = (node) => {
    for (const c of node.childNodes) {
      if (c.nodeType !== 1) continue;
      if (matches(c, chain, root)) out.push(c);
      walk(c);
    }
  };
  if (includeRoot && matches(root, chain, null)) out.push(root);
  walk(root);
  return out;
}

function matches(el, chain, root) {
  if (!chain[chain.length - 1](el)) return false;
  let i = chain.length - 2;
  for (let cur = el.parentNode; i >= 0 && cur && cur !== root; cur = cur.parentNode) {
    if (cur.nodeType === 1 && chain[i](cur)) i -= 1;
  }
  if (i >= 0 && root && root.nodeType === 1 && chain[i](root)) i -= 1;
  return i < 0;
}

module.exports = { Document, Element, Text };
