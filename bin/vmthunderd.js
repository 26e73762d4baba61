#!/usr/bin/env -S GLIBC_TUNABLES=glibc.malloc.hugetlb=1 node --initial-heap-size=64 --max-semi-space-size=4
// The agent; see entry.js for which build runs. The first line sets v8-flags.js's AGENT_ENV and AGENT_NODE_FLAGS
// (a test checks that they agree): glibc's malloc and the heap's sizes are fixed when the process starts.
'use strict'
const { runEntry } = require('./entry.js')
const { agentV8Hooks } = require('./v8-flags.js')
runEntry('daemon/main', 'vmthunderd', agentV8Hooks()).catch(err => { process.exitCode = 1; throw err })
