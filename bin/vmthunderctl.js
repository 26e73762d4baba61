#!/usr/bin/env node
// The CLI; see entry.js for which build runs.
import { runEntry } from './entry.js'
await runEntry('cli/main', 'vmthunderctl')
