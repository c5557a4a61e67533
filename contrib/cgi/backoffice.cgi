#!/bin/sh
# The CGI program nginx (through fcgiwrap) and Apache run: `backoffice cgi`
# answers one request, then may start a detached worker, and exits. Install it
# as /usr/local/lib/backoffice/backoffice.cgi, mode 755.
#
# Which repositories it serves, as /r/NAME (one of the two):
#   every SQLite file in a folder (files added later appear at once):
exec /usr/local/bin/backoffice cgi --repolist /srv/backoffice
#   or one repository, a file or a postgres:// URL (the environment keeps a
#   password off command lines):
#     BACKOFFICE_REPO=/srv/backoffice/app.db exec /usr/local/bin/backoffice cgi
