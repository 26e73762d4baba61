#!/usr/bin/env -S node --initial-heap-size=64 --max-semi-space-size=4
// The agent; see entry.js for which build runs. The flags on the first line are v8-flags.js's AGENT_NODE_FLAGS
// (a test checks that they agree): they size the heap, which only node's command line can.
'use strict'
const { runEntry } = require('./entry.js')
const { agentV8Hooks } = require('./v8-flags.js')
runEntry('daemon/main', 'vmthunderd', agentV8Hooks()).catch(err => { process.exitCode = 1; throw err })
