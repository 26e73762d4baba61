#!/usr/bin/env node
// The agent; see entry.js for which build runs.
'use strict'
const { runEntry } = require('./entry.js')
const { agentV8Hooks } = require('./v8-flags.js')
runEntry('daemon/main', 'vmthunderd', agentV8Hooks()).catch(err => { process.exitCode = 1; throw err })
