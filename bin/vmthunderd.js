#!/usr/bin/env node
// The agent; see entry.js for which build runs.
import { runEntry } from './entry.js'
import { agentV8Hooks } from './v8-flags.js'
await runEntry('daemon/main', 'vmthunderd', agentV8Hooks())
