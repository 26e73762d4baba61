#!/usr/bin/env node
// The agent; see entry.js for which build runs.
import { runEntry } from './entry.js'
await runEntry('daemon/main', 'vmthunderd')
