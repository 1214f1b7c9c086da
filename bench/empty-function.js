// The cold-start baseline: the smallest function the Functions Framework can
// serve. It answers 200 to every request (the bench polls /health and posts to
// /generate against it exactly as it does against imageGen).
'use strict';
const functions = require('@google-cloud/functions-framework');

function empty(req, res) {
  res.status(200).json({status: 'ok'});
}

functions.http('empty', empty);
exports.empty = empty;
