// V8 flags of the agent (not of the CLI), set at run time: after the bundle and its code cache are loaded (a
// cache is only accepted by a V8 with the flags it was written with).
//
// Why: a host agent boots VMs in waves, and most of its code runs a few hundred to a few thousand times per
// wave: too often for the interpreter, too rarely to repay TurboFan. In the 8-host testbed wave (npm run
// bench:testbed -- --perf) TurboFan compiling took 19-20 % of a host agent's CPU and code not yet optimized
// another 19 %. With four times V8's default interrupt budget before a function is considered for TurboFan,
// and baseline (Sparkplug) code for each function at its first compile, the compiler took 5 % and the host
// agents' CPU per boot fell by about a sixth (5 interleaved runs each: sum over 8 hosts 60.4 s -> 50.8 s).
// Sparkplug for every function is turned on once the agent has started: at load it would compile baseline
// code for everything start-up runs once (npm run bench:package, one pair of runs: 0.39 against 0.27 CPU-s).
// Both take effect at run time (checked: a function compiled afterwards gets Sparkplug code at once, and a hot
// function is marked for TurboFan after 750 instead of fewer than 250 calls).
//
// VMTHUNDER_V8_FLAGS replaces both lists, set at load (empty: V8's defaults), for measuring and for a node
// whose V8 differs.
'use strict'
const { setFlagsFromString } = require('node:v8')

const AGENT_V8_FLAGS_AT_LOAD = ['--interrupt-budget=540672']
const AGENT_V8_FLAGS_ONCE_STARTED = ['--always-sparkplug']

function override (env) {
  return env.VMTHUNDER_V8_FLAGS === undefined ? undefined : env.VMTHUNDER_V8_FLAGS.split(/\s+/).filter((f) => f !== '')
}

/** Hooks for runEntry: flags at load, more once the agent has started. */
function agentV8Hooks (env = process.env) {
  const replaced = override(env)
  return {
    loaded: () => { for (const flag of replaced ?? AGENT_V8_FLAGS_AT_LOAD) setFlagsFromString(flag) },
    started: () => { if (replaced === undefined) for (const flag of AGENT_V8_FLAGS_ONCE_STARTED) setFlagsFromString(flag) }
  }
}

module.exports = { AGENT_V8_FLAGS_AT_LOAD, AGENT_V8_FLAGS_ONCE_STARTED, agentV8Hooks }
