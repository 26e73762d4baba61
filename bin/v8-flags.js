// V8 flags of the agent (not of the CLI), set at run time: after the bundle and its code cache are loaded (a
// cache is only accepted by a V8 with the flags it was written with).
//
// Why: a host agent boots VMs in waves, and most of its code runs a few hundred to a few thousand times per
// wave: too often for the interpreter, too rarely to repay TurboFan. In the 8-host testbed wave (npm run
// bench:testbed -- --perf) TurboFan compiling took 19-20 % of a host agent's CPU and code not yet optimized
// another 19 %. With four times V8's default interrupt budget before a function is considered for TurboFan,
// and baseline (Sparkplug) code for each function at its first compile, the compiler took 5 % and the host
// agents' CPU per boot fell by about a sixth (5 interleaved runs each: sum over 8 hosts 60.4 s -> 50.8 s).
// Eight times since 2026-11-30 (d2d973e, the same wave, 7 interleaved rounds): the host agents' CPU sum 13.66 ->
// 13.03 s on average (lower in 6 of 7), slowest host 9.07 -> 8.71 s; sixteen times did no better than eight (4
// rounds: 12.95 against 13.13 s), no TurboFan at all (--no-opt) was mixed. On earlier code 8x had been slower.
// Sparkplug for every function is turned on once the agent has started: at load it would compile baseline
// code for everything start-up runs once (npm run bench:package, one pair of runs: 0.39 against 0.27 CPU-s).
// Both take effect at run time (checked: a function compiled afterwards gets Sparkplug code at once, and a hot
// function is marked for TurboFan after several times as many calls: 750 instead of fewer than 250 at 4x).
//
// AGENT_NODE_FLAGS are different: they size the heap, which V8 fixes when the process starts, so they must be on
// node's command line (bin/vmthunderd.js's first line; launchers that run `node bin/vmthunderd.js` pass them,
// scripts/lib/agent-process.ts, bench-testbed.ts), and the daemon's code cache is written under them
// (write-code-cache.js: V8 rejects a cache written under other command-line flags). Why: V8 sizes a fresh
// heap's old generation from the survival of its first collections; an agent's heap is small (12-20 MB live)
// while a boot wave moves ~50 MB of blocks through it, so V8 kept starting incremental marking every 100-150 ms
// (21 full collections in a 1.5 s boot replay at the origin, 7 at the client, with --trace-gc). With an initial
// heap of 64 MB: 5 and 1. Interleaved runs: the origin of a one-client replay 480-540 -> 380-420 CPU-ms, the
// client 730-840 -> 650-740; the 8-host testbed wave at 1 Gb/s, 7 pairs: the host agents' CPU sum 24.1 -> 21.1 s
// on average (lower in 6 of 7), slowest host lower in 6 of 7. Runtime setFlagsFromString of the same flag has no
// effect (checked: 14 full collections).
// The young generation is kept small too (--max-semi-space-size=4, MB; V8's default grows it to 16): what an
// agent allocates per block and per read is short-lived, and a small nursery stays in the caches of cores that
// 17 processes share. 8-host testbed wave at 1 Gb/s, interleaved (the flag added on the command line): 2 MB
// against the default, 6 pairs: the host agents' CPU 11.32 -> 10.22 s on average, lower in 6 of 6, slowest host
// 7.50 -> 6.83 s; 4 MB against 16 MB, 3 pairs: 10.0, 9.4, 10.6 against 10.3, 10.7, 11.6 CPU-s, slowest 6.63,
// 6.30, 7.12 against 6.73, 6.99, 7.60 s. Why 4 and not 2: at 2 MB an idle packaged daemon (npm run
// bench:package) used 1.15-1.35 % of a core instead of 0.80 (issue 11's goal is 1 %); at 4 MB, 0.65 %. A
// minimum of 16 MB (--min-semi-space-size=16) cost 10-40 % more CPU in the wave.
//
// AGENT_ENV is the agent's environment, for the same reason as AGENT_NODE_FLAGS: glibc reads its tunables when
// the process starts (bin/vmthunderd.js's first line sets it; so do the launchers and the systemd unit).
// glibc.malloc.hugetlb=1: malloc advises transparent huge pages for its heap (when THP is `madvise` or
// `always`, /sys/kernel/mm/transparent_hugepage/enabled). Why: the blocks an agent receives are node Buffers
// from malloc, held until the cache's group commit, so a boot wave grows the heap by about what it received,
// and each fresh 4 KiB page was a page fault: 16,000 per host agent in the 8-host testbed wave at 1 Gb/s
// (bench:testbed's "minor page faults"), 12 % of a host agent's perf samples, and faults cost more than usual
// in a virtual machine. With huge pages: 1,200. 6 interleaved pairs at 1 Gb/s (ABBA), the variable alone
// changed: the host agents' CPU 17.8, 17.6, 18.6, 13.8, 13.0, 14.0 -> 15.4, 15.0, 11.8, 11.6, 10.7, 11.3 CPU-s
// (15.8 -> 12.6 on average), slowest host 11.4 -> 9.5 s on average, lower in every pair; at 100 Mb/s, 2 pairs:
// 27.1, 23.0 -> 24.7, 21.1 CPU-s. An idle packaged daemon's RSS stayed at 86 MB (npm run bench:package).
//
// VMTHUNDER_V8_FLAGS replaces both lists, set at load (empty: V8's defaults), for measuring and for a node
// whose V8 differs.
'use strict'
const { setFlagsFromString } = require('node:v8')

const AGENT_NODE_FLAGS = ['--initial-heap-size=64', '--max-semi-space-size=4']
const AGENT_ENV = Object.freeze({ GLIBC_TUNABLES: 'glibc.malloc.hugetlb=1' })
const AGENT_V8_FLAGS_AT_LOAD = ['--interrupt-budget=1081344']
const AGENT_V8_FLAGS_ONCE_STARTED = ['--always-sparkplug']

function override (env) {
  return env.VMTHUNDER_V8_FLAGS === undefined ? undefined : env.VMTHUNDER_V8_FLAGS.split(/\s+/).filter((f) => f !== '')
}

/**
 * The environment to start an agent with: `env` plus AGENT_ENV. A GLIBC_TUNABLES already set keeps its
 * tunables (ours is appended unless it sets glibc.malloc.hugetlb itself).
 */
function agentEnv (env = process.env) {
  const have = env.GLIBC_TUNABLES ?? ''
  if (have === '') return { ...env, ...AGENT_ENV }
  if (/(^|:)glibc\.malloc\.hugetlb=/.test(have)) return { ...env }
  return { ...env, GLIBC_TUNABLES: `${have}:${AGENT_ENV.GLIBC_TUNABLES}` }
}

/** Hooks for runEntry: flags at load, more once the agent has started. */
function agentV8Hooks (env = process.env) {
  const replaced = override(env)
  return {
    loaded: () => { for (const flag of replaced ?? AGENT_V8_FLAGS_AT_LOAD) setFlagsFromString(flag) },
    started: () => { if (replaced === undefined) for (const flag of AGENT_V8_FLAGS_ONCE_STARTED) setFlagsFromString(flag) }
  }
}

module.exports = { AGENT_NODE_FLAGS, AGENT_ENV, agentEnv, AGENT_V8_FLAGS_AT_LOAD, AGENT_V8_FLAGS_ONCE_STARTED, agentV8Hooks }
