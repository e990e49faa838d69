// Run once by the mongo image at the first start (/docker-entrypoint-initdb.d), as the
// root user of MONGO_INITDB_ROOT_USERNAME/_PASSWORD_FILE: the application's own user,
// allowed to read and write its one database and nothing else (no user admin, no other
// database). Its password comes from a Docker secret, never from this file.
const fs = require("fs");
const password = fs.readFileSync("/run/secrets/mongo-app", "utf8").trim();
const database = process.env.COHORTSTREAM_MONGO_DATABASE || "cohortstream";
db.getSiblingDB("admin").createUser({
  user: "cohortstream",
  pwd: password,
  roles: [{ role: "readWrite", db: database }],
});
print(`created user cohortstream (readWrite on ${database})`);
