#!/usr/bin/env node
// The CLI; see entry.js for which build runs.
'use strict'
const { runEntry } = require('./entry.js')
runEntry('cli/main', 'vmthunderctl').catch(err => { process.exitCode = 1; throw err })
