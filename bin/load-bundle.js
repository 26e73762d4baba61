// Loads a packaged bundle (dist/NAME.cjs, a CommonJS module made by scripts/bundle.mjs) with V8's code cache.
// Compiling the daemon's 2 MB bundle, eagerly and then function by function as it starts, was about a third
// of its start-up CPU; with the cache V8 deserializes bytecode instead (npm run bench:package). Node 20 has
// no module compile cache (node 22's module.enableCompileCache), so this does what it would, for one file.
// A cache written right after loading held only the modules' top-level code: the functions start-up runs
// were still compiled at every start (18 % of the daemon's start-up samples under perf), so the daemon's is
// written after a warm-up start (writeCodeCache; 1.5 -> 2.0 MiB, about 0.05 CPU-s less per start).
//
// The cache, NAME.cjs.v8cache beside the bundle, is written by write-code-cache.js at build and at install
// (postinstall: with the node that will run it), never by the daemon (its install dir is read-only under
// systemd). It is only an optimization: missing, stale or rejected (another node or V8 flags), the bundle is
// compiled from source as before. V8 checks its version and flags, but of the source only the length, and
// of the cache itself nothing in release builds: the file starts with the SHA-256 of the bundle and the cache
// together, so a rebuilt bundle never runs a stale cache and a damaged file is not handed to V8.

'use strict'
const { readFileSync, writeFileSync, renameSync } = require('node:fs')
const { createHash } = require('node:crypto')
const { Script } = require('node:vm')
const Module = require('node:module')
const { createRequire } = Module
const { dirname } = require('node:path')

const HASH_BYTES = 32
/** A start-up takes well under a second; this bounds a warm-up at install that hangs. */
const WARM_UP_TIMEOUT_MS = 60_000

function codeCachePath (bundlePath) {
  return `${bundlePath}.v8cache`
}

/** Compiles and runs the bundle; returns its exports and what became of the cache. */
function loadBundle (bundlePath, { cachePath = codeCachePath(bundlePath), useCache = true } = {}) {
  const bytes = readFileSync(bundlePath)
  let cachedData
  let cache = useCache ? 'absent' : 'unused'
  if (useCache) {
    try {
      const file = readFileSync(cachePath)
      const data = file.subarray(HASH_BYTES)
      if (file.byteLength > HASH_BYTES && keyOf(bytes, data).equals(file.subarray(0, HASH_BYTES))) cachedData = data
      else cache = 'stale'
    } catch (err) {
      if (err.code !== 'ENOENT') cache = `unreadable (${err.code ?? err.message})`
    }
  }
  // latin1: the bundle is ASCII (scripts/bundle.mjs), and this decoding is a plain copy, unlike UTF-8's.
  const script = new Script(Module.wrap(bytes.toString('latin1')), { filename: bundlePath, cachedData })
  if (cachedData !== undefined) cache = script.cachedDataRejected === true ? 'rejected' : 'used'
  const module = { exports: {}, filename: bundlePath, id: bundlePath, loaded: false }
  script.runInThisContext()(module.exports, createRequire(bundlePath), module, bundlePath, dirname(bundlePath))
  module.loaded = true
  return { exports: module.exports, cache, script, bytes }
}

function keyOf (bundle, data) {
  return createHash('sha256').update(bundle).update(data).digest()
}

/**
 * Loads the bundle (running its modules' top-level code, which starts nothing) and writes the cache of what
 * that compiled. A bundle that exports warmUp (the daemon's, src/daemon/warm-up.ts) then runs its start-up
 * in this process, and the cache is made once it has started: V8 caches every function compiled so far, so
 * the functions start-up runs are deserialized at each start instead of compiled (npm run bench:package). A
 * warm-up that fails leaves the cache of what had compiled, and its error in `warmUpError`. The file is
 * replaced by rename, so a daemon starting meanwhile reads the old one or the new.
 */
async function writeCodeCache (bundlePath, { cachePath = codeCachePath(bundlePath), signal = AbortSignal.timeout(WARM_UP_TIMEOUT_MS) } = {}) {
  const { exports, script, bytes } = loadBundle(bundlePath, { useCache: false })
  let data
  let warmUpError
  if (typeof exports.warmUp === 'function') {
    try {
      await exports.warmUp({ signal, ready: () => { data = script.createCachedData() } })
      if (data === undefined) throw new Error('the warm-up ended without calling ready()')
    } catch (err) {
      warmUpError = err
    }
  }
  data ??= script.createCachedData()
  const tmp = `${cachePath}.${process.pid}.tmp`
  writeFileSync(tmp, Buffer.concat([keyOf(bytes, data), data]))
  renameSync(tmp, cachePath)
  return { cachePath, bytes: HASH_BYTES + data.byteLength, warmUpError }
}

module.exports = { codeCachePath, loadBundle, writeCodeCache }
